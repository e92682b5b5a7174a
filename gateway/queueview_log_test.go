package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
)

// failingQueue is a queue view that cannot be computed (its store unavailable).
type failingQueue struct{}

func (failingQueue) QueueView(context.Context, time.Time) (*broker.QueueView, error) {
	return nil, errors.New("broker: JetStream unavailable for now")
}

// A queue view that fails leaves a waiting job's GET without its position, and the
// operator hears of it once per failurelog.Every (the line then counting those not
// logged), not once per GET: a client polling its job every 100 ms through a store's
// hiccup wrote ten warnings a second.
func TestFailingQueueViewIsWarnedOfOncePerWindow(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b := newTestBundle(t, withGateway(func(c *Config) { c.Logger = log; c.Queue = failingQueue{} }))
	now := time.Date(2026, 12, 6, 3, 0, 0, 0, time.UTC)
	b.GW.failures.Now = func() time.Time { return now } // the window passes only when told
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`)
	get := func() {
		t.Helper()
		resp, out := b.request(t, http.MethodGet, "/jobs/"+id, nil)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(out), `"queued"`) {
			t.Fatalf("GET /jobs/%s: %d %s, want the queued job", id, resp.StatusCode, out)
		}
	}
	for range 10 {
		get()
	}
	now = now.Add(failurelog.Every)
	get()
	var warned []string
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, "queue view") {
			warned = append(warned, l)
		}
	}
	if len(warned) != 2 {
		t.Fatalf("%d queue view warnings for 11 GETs over two windows, want 2:\n%s", len(warned), logs.String())
	}
	if strings.Contains(warned[0], "repeats=") || !strings.Contains(warned[1], "repeats=") {
		t.Errorf("warnings %q, want the second to count those not logged", warned)
	}
}
