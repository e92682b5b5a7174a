package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// submitBench is `foreman bench submit`'s settings.
type submitBench struct {
	f        *clientFlags
	model    string
	callers  int
	n        int
	duration time.Duration
}

// submitReport is what `foreman bench submit --json` prints.
type submitReport struct {
	Callers  int     `json:"callers"`
	Seconds  float64 `json:"seconds"`
	Accepted int     `json:"accepted"`
	PerSec   float64 `json:"submits_per_s"`
	Latency  summary `json:"latency"`
	// Refused counts the answers other than 202 by status; "error" counts requests that
	// got no answer.
	Refused map[string]int `json:"refused"`
	// FirstErr says the first of those: why it got no answer, or foreman's refusal.
	FirstErr string `json:"first_error,omitempty"`
}

func newBenchSubmitCmd(e *env) *cobra.Command {
	b := &submitBench{}
	cmd := &cobra.Command{
		Use:   "submit --url FOREMAN [--callers 16] [--duration 10s | -n N]",
		Short: "POST /jobs from concurrent callers and print submits per second",
		Long: "submit posts small async chat jobs (num_predict 1) to foreman's POST /jobs from --callers\n" +
			"concurrent callers, each on its own kept-alive connection, for --duration or until -n jobs\n" +
			"were posted. It prints the accepted submits per second, the p50/p99 time to the 202, and the\n" +
			"answers other than 202 by status. The jobs run afterwards: point foreman at a target that\n" +
			"answers fast, and give it a FOREMAN_MAX_QUEUE above what you post.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return b.run(cmd, e) },
	}
	b.f = addClientFlags(cmd, false)
	b.f.addTimeout(cmd, defaultTimeout)
	cmd.Flags().Lookup("timeout").Usage = "count a submit foreman has not answered within this long as an error and go on (0: wait for ever)"
	fs := cmd.Flags()
	fs.StringVarP(&b.model, "model", "m", "tiny-a", "model the jobs name")
	fs.IntVarP(&b.callers, "callers", "c", 16, "concurrent callers")
	fs.IntVarP(&b.n, "n", "n", 0, "jobs to post in all (instead of --duration)")
	fs.DurationVar(&b.duration, "duration", 10*time.Second, "how long to post")
	return cmd
}

func (b *submitBench) run(cmd *cobra.Command, e *env) error {
	if cmd.Flags().Changed("n") && cmd.Flags().Changed("duration") {
		return errors.New("-n and --duration exclude each other")
	}
	if b.callers < 1 || b.n < 0 || b.duration <= 0 {
		return errors.New("--callers must be at least 1, -n not negative, --duration positive")
	}
	body, err := json.Marshal(map[string]any{
		"model":    b.model,
		"messages": []map[string]string{{"role": "user", "content": "bench"}},
		"stream":   false,
		"options":  map[string]any{"num_predict": 1},
	})
	if err != nil {
		return err
	}
	url := strings.TrimRight(b.f.baseURL(e), "/") + "/jobs"
	base := ollama.RedactURL(strings.TrimRight(b.f.baseURL(e), "/"))
	token := pick(b.f.token, e, "FOREMAN_TOKEN", "")

	interrupted := cmd.Context()
	ctx := interrupted
	if b.n == 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.duration)
		defer cancel()
	}
	var (
		claimed atomic.Int64
		mu      sync.Mutex
		took    []time.Duration
		refused = map[string]int{}
		first   string
		wg      sync.WaitGroup
	)
	start := time.Now()
	for range b.callers {
		wg.Go(func() {
			hc := keepAliveClient(1)
			defer hc.CloseIdleConnections()
			var mine []time.Duration
			for ctx.Err() == nil && (b.n == 0 || claimed.Add(1) <= int64(b.n)) {
				rctx, cancel := b.f.perRequest(ctx)
				d, status, answer, err := postOneJob(rctx, hc, url, token, body)
				timedOut := err != nil && ctx.Err() == nil && errors.Is(rctx.Err(), context.DeadlineExceeded)
				cancel()
				if err != nil && (interrupted.Err() != nil || ctx.Err() != nil && b.n == 0) {
					break // Ctrl-C, or the duration, ended it mid-request: not a refusal
				}
				if status == http.StatusAccepted {
					mine = append(mine, d)
					continue
				}
				key := strconv.Itoa(status)
				if err != nil {
					key = "error"
				}
				mu.Lock()
				refused[key]++
				if first == "" {
					// Said as the other commands say it, the URL's credentials hidden
					// (the report may be shared).
					switch {
					case timedOut:
						first = noAnswerWithin(base, b.f.timeout, "foreman or its job store may be hung; see its log and /healthz")
					case err != nil:
						first = unreachableAt(base, url, err, unreachableHint(err))
					default:
						first = refusedBy(base, status, answer, false)
					}
				}
				mu.Unlock()
			}
			mu.Lock()
			took = append(took, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	r := submitReport{
		Callers: b.callers, Seconds: elapsed.Seconds(), Accepted: len(took),
		PerSec: float64(len(took)) / elapsed.Seconds(), Latency: summarize(took), Refused: refused, FirstErr: first,
	}
	if b.f.json {
		if err := printJSON(cmd.OutOrStdout(), r); err != nil {
			return err
		}
	} else if err := r.print(cmd.OutOrStdout()); err != nil {
		return err
	}
	if interrupted.Err() != nil {
		// The figures above are of the run so far; exit 130 all the same, as an
		// interrupted command does.
		return errInterrupted
	}
	if r.Accepted == 0 {
		return fmt.Errorf("no submit was accepted (%s)", r.refusedText())
	}
	return nil
}

// postOneJob posts one job and returns the time to its answer, the status and, when that
// is not 202, the start of the answer.
func postOneJob(ctx context.Context, hc *http.Client, url, token string, body []byte) (time.Duration, int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(string(body)))
	if err != nil {
		return 0, 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	start := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return 0, 0, nil, err
	}
	defer resp.Body.Close()
	var answer []byte
	if resp.StatusCode != http.StatusAccepted {
		answer, _ = io.ReadAll(io.LimitReader(resp.Body, 512))
		answer = bytes.TrimSpace(answer)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return time.Since(start), resp.StatusCode, answer, err
}

func (r submitReport) refusedText() string {
	if len(r.Refused) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(r.Refused)) {
		parts = append(parts, fmt.Sprintf("%s: %d", k, r.Refused[k]))
	}
	s := strings.Join(parts, ", ")
	if r.FirstErr != "" {
		s += " (first error: " + r.FirstErr + ")"
	}
	return s
}

func (r submitReport) print(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "callers\taccepted\tseconds\tsubmits/s\tp50\tp99\t")
	fmt.Fprintf(tw, "%d\t%d\t%.2f\t%.0f\t%s\t%s\t\n", r.Callers, r.Accepted, r.Seconds, r.PerSec, fmtMS(r.Latency.P50), fmtMS(r.Latency.P99))
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "not 202: %s\n", r.refusedText())
	return err
}
