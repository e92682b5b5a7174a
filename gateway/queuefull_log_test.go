package gateway

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
)

// A full queue refuses submit after submit with 503: the operator hears of it, naming
// the setting, once per failurelog.Every (the line then counting the refusals not
// logged), not once per refused submit, and not only at debug, where the default log
// level left a queue full for hours without a line.
func TestFullQueueIsWarnedOfOncePerWindow(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b := newTestBundle(t,
		withBroker(brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 2 })),
		withGateway(func(c *Config) { c.Logger = log }))
	now := time.Date(2026, 12, 6, 3, 0, 0, 0, time.UTC)
	b.GW.failures.Now = func() time.Time { return now } // the window passes only when told
	submit := func() int {
		t.Helper()
		resp, _ := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`))
		return resp.StatusCode
	}
	for i := range 2 {
		if code := submit(); code != http.StatusAccepted {
			t.Fatalf("submit %d: %d, want 202", i, code)
		}
	}
	for i := range 20 {
		if code := submit(); code != http.StatusServiceUnavailable {
			t.Fatalf("submit %d past the queue's 2: %d, want 503", i, code)
		}
	}
	now = now.Add(failurelog.Every)
	if code := submit(); code != http.StatusServiceUnavailable {
		t.Fatalf("submit past the window: %d, want 503", code)
	}
	var warned []string
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			warned = append(warned, l)
		}
	}
	if len(warned) != 2 {
		t.Fatalf("%d warnings for 21 refused submits over two windows, want 2:\n%s", len(warned), logs.String())
	}
	for i, l := range warned {
		if !strings.Contains(l, "level=WARN") || !strings.Contains(l, "FOREMAN_MAX_QUEUE") || !strings.Contains(l, "reason=queue_full") {
			t.Errorf("warning %d %q: want a warning naming FOREMAN_MAX_QUEUE and the reason", i, l)
		}
	}
	if strings.Contains(warned[0], "repeats=") || !strings.Contains(warned[1], "repeats=19") {
		t.Errorf("warnings %q, want the second to count the 19 refusals not logged", warned)
	}
}
