package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

func newQueueCmd(e *env) *cobra.Command {
	var (
		f     *clientFlags
		limit int
	)
	cmd := &cobra.Command{
		Use:   "queue",
		Short: "Show the running job and the waiting jobs in the order foreman will run them",
		Long: "Show the running job, the models loaded and the waiting jobs in the order foreman\n" +
			"expects to run them, with each job's position and expected start (ETA).\n" +
			"--json prints the GET /queue body as foreman sent it.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := limitSet(cmd, limit); err != nil {
				return err
			}
			c, err := f.client(cmd, e)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := f.bounded(cmd)
			defer cancel()
			q, err := c.Queue(ctx, limit)
			if err != nil {
				return f.explain(e, err)
			}
			out := cmd.OutOrStdout()
			if f.json {
				raw := strings.TrimRight(string(q.Raw), "\n")
				_, err := fmt.Fprintln(out, raw)
				return err
			}
			now := e.clock()
			running := "none"
			if j := q.Running; j != nil {
				running = fmt.Sprintf("%s %s (%s", termSafe(j.ID), termSafe(j.Model), termSafe(string(j.State)))
				if j.StartedAt != nil {
					running += ", " + shortAge(now.Sub(*j.StartedAt))
				}
				running += ")"
			}
			loaded := strings.Join(termSafeAll(q.Loaded), ", ")
			if loaded == "" {
				loaded = "none"
			}
			fmt.Fprintf(out, "Running: %s\nLoaded:  %s\nWaiting: %d\n", running, loaded, q.Total)
			for _, j := range q.RunningElsewhere {
				age := ""
				if j.StartedAt != nil {
					age = ", " + shortAge(now.Sub(*j.StartedAt))
				}
				on := ""
				if j.Runner != "" || j.RunnerGone {
					on = ", on " + runnerText(j.Runner, j.RunnerGone)
				}
				fmt.Fprintf(out, "On another Mac: %s %s (%s%s%s)\n", termSafe(j.JobID), termSafe(j.Model), termSafe(string(j.State)), age, on)
			}
			if p := q.Paused; p != nil {
				fmt.Fprintf(out, "Paused:  %s for %s: %s\n", pauseText(p.Reason), shortAge(now.Sub(p.Since)), termSafe(p.Error))
			}
			fmt.Fprintln(out)
			tw := tabwriter.NewWriter(out, 0, 8, 3, ' ', 0)
			fmt.Fprintln(tw, "POS\tID\tMODEL\tKIND\tPRIORITY\tPROGRAM\tAGE\tETA")
			for _, j := range q.Queued {
				eta := "now"
				if d := j.ETA.Sub(now); d >= time.Second {
					eta = "in " + shortAge(d)
				}
				program := termSafe(j.Program)
				if program == "" {
					program = "-"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.QueuePosition, termSafe(j.JobID), termSafe(j.Model), termSafe(string(j.Kind)), termSafe(j.Priority), program,
					shortAge(now.Sub(j.CreatedAt)), eta)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if more := q.Total - len(q.Queued); more > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "%d more waiting; see them with --limit %d\n", more, q.Total)
			}
			return nil
		},
	}
	f = addClientFlags(cmd, false)
	f.addTimeout(cmd, defaultTimeout)
	cmd.Flags().IntVar(&limit, "limit", 0, "waiting jobs to list (server default 100)")
	return cmd
}

// pauseText says a worker's pause reason in words, fit for a terminal.
func pauseText(reason string) string {
	switch reason {
	case client.PauseTargetUnreachable:
		return "Ollama unreachable"
	case client.PauseStoreRefusesWrites:
		return "job store refuses writes"
	}
	return termSafe(reason)
}
