package gateway

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// silentPolls makes the inventory's polls of a target get no answer: at once, as a poll
// whose bound passed (quiet), or never until the poll's context ends (hung).
type silentPolls struct {
	ollama.Client
	quiet, hung atomic.Bool
}

func (c *silentPolls) Tags(ctx context.Context) (*ollama.ListResponse, []byte, error) {
	if err := c.silence(ctx); err != nil {
		return nil, nil, err
	}
	return c.Client.Tags(ctx)
}

func (c *silentPolls) Ps(ctx context.Context) (*ollama.ProcessResponse, []byte, error) {
	if err := c.silence(ctx); err != nil {
		return nil, nil, err
	}
	return c.Client.Ps(ctx)
}

// silence is the error of a call that gets no answer now, nil when it would get one.
func (c *silentPolls) silence(ctx context.Context) error {
	switch {
	case c.hung.Load():
		<-ctx.Done()
		return ctx.Err()
	case c.quiet.Load():
		return fmt.Errorf("ollama: no answer to the inventory poll: %w", context.DeadlineExceeded)
	}
	return nil
}

// silentPollsBundle is a gateway and its worker, running, whose inventory polls every
// 50ms through polls, with an outage check's bound a minute, its verdict standing an
// hour, and SyncOutageWait wait: once the polls hang, a call that waited for a check
// would not be answered within the test's 30s.
func silentPollsBundle(t *testing.T, polls *silentPolls, wait time.Duration) *testBundle {
	t.Helper()
	opt, start := withWorker(t, func(c *Config) {
		c.SyncOutageWait = wait
		c.outageProbe, c.outageFresh = time.Minute, time.Hour
	})
	b := newTestBundle(t, opt, withPolling(50*time.Millisecond),
		withInventory(func(c *ollama.InventoryConfig) { c.PollTimeout = time.Hour }),
		withTarget(func(c ollama.Client) ollama.Client { polls.Client = c; return polls }))
	eventually(t, 10*time.Second, "the first poll", func() bool { return b.Inv.Snapshot().Polled })
	start()
	return b
}

// silencedBundle is silentPollsBundle whose polls have gone unanswered (quiet) for the
// wait, and hang from then on.
func silencedBundle(t *testing.T, polls *silentPolls, wait time.Duration) *testBundle {
	t.Helper()
	b := silentPollsBundle(t, polls, wait)
	polls.quiet.Store(true)
	eventually(t, 10*time.Second, "the polls unanswered for the wait", func() bool {
		down := b.Inv.Snapshot().DownSince
		return !down.IsZero() && time.Since(down) > min(wait, time.Second)
	})
	polls.hung.Store(true)
	return b
}

// The inventory's own poll that got no answer just now stands as a check would: a call
// refused for the outage, the model lists, are answered at once, not after a check of
// their own.
func TestUnansweredPollStandsAsACheck(t *testing.T) {
	t.Parallel()
	polls := &silentPolls{}
	b := silencedBundle(t, polls, 200*time.Millisecond)
	resp, out := b.request(t, http.MethodGet, "/api/version", nil)
	wantError(t, resp, out, http.StatusBadGateway, "FOREMAN_SYNC_OUTAGE_WAIT")
	for _, path := range []string{"/api/ps", "/api/tags"} {
		resp, out := b.request(t, http.MethodGet, path, nil)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(out), `"models"`) {
			t.Errorf("GET %s while the polls go unanswered: %d %s, want the last known list", path, resp.StatusCode, out)
		}
	}
}

// A pull's answer ends without waiting for a re-poll the target would leave unanswered:
// the inventory's next poll sees the new model.
func TestModelChangeEndsWithoutAnUnansweredPoll(t *testing.T) {
	t.Parallel()
	polls := &silentPolls{}
	b := silencedBundle(t, polls, time.Hour)
	resp, out := b.request(t, http.MethodPost, "/api/pull", []byte(`{"model":"new-model","stream":false}`))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(out), "success") {
		t.Fatalf("pull while the polls go unanswered: %d %s", resp.StatusCode, out)
	}
}

// A target that answers its polls with an error status from the start (a proxy passing
// only the model calls, so foreman never learns the model list) still runs chats and
// jobs: it is there, and says itself whether it has the model. Before, every call was
// refused as if it were unreachable.
func TestTargetAnsweringPollsBadlyFromTheStartRunsJobs(t *testing.T) {
	t.Parallel()
	opt, start := withWorker(t)
	b := newTestBundle(t, opt, withoutInitialPoll())
	b.Fake.FailNextOn("/api/tags", 1<<20, ollamatest.Fail500)
	start()
	resp, out := b.request(t, http.MethodPost, "/api/chat", []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":false}`))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(out), `"done":true`) {
		t.Fatalf("chat behind polls answered with 500: %d %s", resp.StatusCode, out)
	}
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"later"}]}`)
	waitJobState(t, b, id, broker.StateDone)
}

// Once a check has got no answer from the own target, the calls refused for the outage
// just after it are not held for a poll of their own: against a target that takes
// connections and answers nothing, each such poll lasts its whole bound (2s), and every
// refused call waited that long. Here a check's bound is a minute and the polls hang once
// the outage is confirmed: a call that waited for one would not be answered in time.
func TestRefusalsInAConfirmedOutageAreNotHeld(t *testing.T) {
	t.Parallel()
	polls := &silentPolls{}
	b := silentPollsBundle(t, polls, 200*time.Millisecond)
	polls.quiet.Store(true)
	eventually(t, 10*time.Second, "a call refused for the outage", func() bool {
		resp, out := b.request(t, http.MethodGet, "/api/version", nil)
		return resp.StatusCode == http.StatusBadGateway && strings.Contains(string(out), "FOREMAN_SYNC_OUTAGE_WAIT")
	})

	polls.hung.Store(true)
	calls := []struct{ method, path, body string }{
		{http.MethodGet, "/api/version", ""},
		{http.MethodPost, "/api/show", `{"model":"tiny-a"}`},
		{http.MethodPost, "/api/show", `{"model":"not-listed"}`},
		{http.MethodPost, "/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`},
		{http.MethodGet, "/api/version", ""},
	}
	for _, c := range calls {
		var body []byte
		if c.body != "" {
			body = []byte(c.body)
		}
		resp, out := b.request(t, c.method, c.path, body)
		wantError(t, resp, out, http.StatusBadGateway, "FOREMAN_SYNC_OUTAGE_WAIT")
	}
	// A model list older than its cache's age is not polled for again either: the last
	// known one is served at once.
	eventually(t, 10*time.Second, "the last list older than its cache's age", func() bool {
		return time.Since(b.Inv.Snapshot().LastPoll) > tagsMaxAge
	})
	resp, out := b.request(t, http.MethodGet, "/api/tags", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(out), "tiny-a") {
		t.Fatalf("GET /api/tags while the check's verdict stands: %d %s, want the last known list", resp.StatusCode, out)
	}
}

// A check answered with an error status finds the target there: behind a proxy that
// answers the polls so for good, a call passed straight to it once the worker's pause
// has lasted SyncOutageWait goes through, not refused for an outage that has ended.
func TestCheckAnsweredWithAnErrorStatusEndsTheOutage(t *testing.T) {
	t.Parallel()
	var w *worker.Worker
	b := newTestBundle(t, withGateway(func(c *Config) {
		var err error
		// The worker's own probes come an hour apart: its pause outlasts the wait.
		w, err = worker.New(worker.Config{Store: c.Store, Target: c.Target, Inventory: c.Inventory, RetryDelay: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		c.Queue = w
		c.SyncOutageWait = 100 * time.Millisecond
	}))
	b.Fake.SetDown(true)
	jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"whenever"}]}`)
	runUntilCleanup(t, "worker", w.Run)
	eventually(t, 20*time.Second, "the worker paused for SyncOutageWait", func() bool {
		p := w.Paused()
		return p != nil && time.Since(p.Since) > 100*time.Millisecond
	})
	b.Fake.FailNextOn("/api/tags", 1<<20, ollamatest.Fail500)
	b.Fake.SetDown(false)
	resp, out := b.request(t, http.MethodGet, "/api/version", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/version once the target answers (its polls with 500): %d %s", resp.StatusCode, out)
	}
}
