package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"time"

	"github.com/spf13/cobra"
)

// newBenchCmd groups the whole-process measurements: they talk to running processes over
// HTTP (or to a disk), the way a user's client does, never to foreman's packages.
func newBenchCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure a running foreman from outside: added chat latency, submit rate, disk fsync rate",
		Long: "bench measures a running foreman over HTTP as its clients see it.\n" +
			"  chat    foreman against Ollama directly, request by request (added latency)\n" +
			"  submit  POST /jobs from concurrent callers (submits per second)\n" +
			"  fsync   this disk's fsync rate, the yardstick for the submit rate",
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newBenchChatCmd(e), newBenchSubmitCmd(e), newBenchFsyncCmd(e))
	return cmd
}

// summary is the distribution of a sample of durations, in milliseconds for --json.
type summary struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50_ms"`
	P99  float64 `json:"p99_ms"`
	Mean float64 `json:"mean_ms"`
	Min  float64 `json:"min_ms"`
	Max  float64 `json:"max_ms"`
}

func summarize(d []time.Duration) summary {
	if len(d) == 0 {
		return summary{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	var total time.Duration
	for _, v := range s {
		total += v
	}
	return summary{
		N: len(s), P50: ms(percentile(s, 0.50)), P99: ms(percentile(s, 0.99)),
		Mean: ms(total / time.Duration(len(s))), Min: ms(s[0]), Max: ms(s[len(s)-1]),
	}
}

// percentile is the nearest-rank percentile q (0..1] of sorted.
func percentile(sorted []time.Duration, q float64) time.Duration {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// ms is d in milliseconds, rounded to microseconds.
func ms(d time.Duration) float64 { return math.Round(float64(d.Microseconds())) / 1000 }

// fmtMS prints milliseconds as a table cell.
func fmtMS(v float64) string { return fmt.Sprintf("%.2fms", v) }

// fmtAdded prints a difference in milliseconds with its sign.
func fmtAdded(v float64) string { return fmt.Sprintf("%+.2fms", v) }

// keepAliveClient is an HTTP client with its own connection pool, kept alive between
// requests, so a measurement sees requests and not connection setups.
func keepAliveClient(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		MaxIdleConns: conns, MaxIdleConnsPerHost: conns, IdleConnTimeout: time.Minute,
		DisableCompression: true,
	}}
}

// pauseCtx waits d, or less if ctx ends first.
func pauseCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
