package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// fsyncReport is what `foreman bench fsync --json` prints.
type fsyncReport struct {
	Dir    string  `json:"dir"`
	IdleMS float64 `json:"idle_ms"`
	PerSec float64 `json:"fsyncs_per_s"`
	Each   summary `json:"fsync"`
}

func newBenchFsyncCmd(e *env) *cobra.Command {
	var (
		dir     string
		n, size int
		idle    time.Duration
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "fsync --dir DIR [-n 2000]",
		Short: "Measure how many fsyncs per second the disk under DIR does",
		Long: "fsync appends a small record to a scratch file in DIR and fsyncs it, N times, the way a\n" +
			"JetStream file store with sync_always writes, and prints the rate and the p50/p99 of one\n" +
			"fsync. Run it on the disk of FOREMAN_DATA_DIR: submits per second divided by this rate is the\n" +
			"figure that carries over to another machine. The file is removed afterwards.\n\n" +
			"--idle pauses before every write, so each fsync finds the disk quiet, as a job arriving at\n" +
			"an idle foreman does (some disks, virtual ones above all, take several times longer then);\n" +
			"the rate is then counted over the fsyncs' own time, the pauses left out.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return errors.New("--dir is required: a directory on the disk to measure")
			}
			if n < 1 || size < 1 || idle < 0 {
				return errors.New("-n and --size must be at least 1, --idle not negative")
			}
			r, err := measureFsync(cmd.Context(), dir, n, size, idle)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), r)
			}
			return r.print(cmd.OutOrStdout())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&dir, "dir", "", "directory on the disk to measure (required)")
	fs.IntVarP(&n, "n", "n", 2000, "fsyncs")
	fs.IntVar(&size, "size", 256, "bytes appended before each fsync")
	fs.DurationVar(&idle, "idle", 0, "pause before each write (e.g. 60ms): fsyncs that find the disk quiet")
	fs.BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}

func measureFsync(ctx context.Context, dir string, n, size int, idle time.Duration) (fsyncReport, error) {
	f, err := os.CreateTemp(dir, "foreman-bench-fsync-*")
	if err != nil {
		return fsyncReport{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	rec := make([]byte, size)
	took := make([]time.Duration, 0, n)
	var busy time.Duration
	for range n {
		if err := pauseCtx(ctx, idle); err != nil {
			return fsyncReport{}, err
		}
		t := time.Now()
		if _, err := f.Write(rec); err != nil {
			return fsyncReport{}, err
		}
		if err := f.Sync(); err != nil {
			return fsyncReport{}, fmt.Errorf("fsync %s: %w", f.Name(), err)
		}
		d := time.Since(t)
		took = append(took, d)
		busy += d
	}
	return fsyncReport{Dir: dir, IdleMS: ms(idle), PerSec: float64(n) / busy.Seconds(), Each: summarize(took)}, nil
}

func (r fsyncReport) print(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "fsyncs\tfsyncs/s\tp50\tp99\t")
	fmt.Fprintf(tw, "%d\t%.0f\t%s\t%s\t\n", r.Each.N, r.PerSec, fmtMS(r.Each.P50), fmtMS(r.Each.P99))
	if err := tw.Flush(); err != nil {
		return err
	}
	idle := ""
	if r.IdleMS > 0 {
		idle = fmt.Sprintf(", each after %s idle", time.Duration(r.IdleMS*float64(time.Millisecond)))
	}
	_, err := fmt.Fprintf(w, "disk under %s%s\n", r.Dir, idle)
	return err
}
