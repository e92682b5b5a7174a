package gateway

import (
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
)

// An Ollama that is down fails every pass-through call with a 502: a client polling it
// (a UI asking /api/version every second, a script retrying at once) gets its 502s, and
// the operator's log one error line for them, not one per call.
func TestRepeatedFailureLoggedOnce(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b := newTestBundle(t, withGateway(func(c *Config) { c.Logger = log }))
	b.Fake.SetDown(true)
	for i := range 20 {
		resp, body := b.request(t, http.MethodGet, "/api/version", nil)
		if resp.StatusCode < 500 {
			t.Fatalf("call %d with Ollama down: %d %s", i, resp.StatusCode, body)
		}
	}
	n := 0
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, "level=ERROR") && strings.Contains(l, `msg="request failed"`) {
			n++
		}
	}
	if n == 0 || n > 2 {
		t.Fatalf("%d error lines for 20 calls failing alike, want one (two if the outage's refusal took over):\n%s", n, logs.String())
	}
}

// The error line of a failure that came again within the window counts the repeats not
// logged, so the operator sees how often it failed.
func TestRepeatedFailureLineCountsTheRepeats(t *testing.T) {
	var logs syncBuffer
	s := &Server{log: slog.New(slog.NewTextHandler(&logs, nil))}
	now := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	s.failures.Now = func() time.Time { return now }
	down := errors.New("ollama is unreachable: connection refused")
	for range 4 {
		s.logFailure("request failed", http.StatusBadGateway, down)
	}
	now = now.Add(failurelog.Every)
	s.logFailure("request failed", http.StatusBadGateway, down)
	var errs []string
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, "level=ERROR") {
			errs = append(errs, l)
		}
	}
	if len(errs) != 2 || strings.Contains(errs[0], "repeats=") || !strings.Contains(errs[1], "repeats=3") {
		t.Fatalf("error lines %q, want two, the second with repeats=3", errs)
	}
}
