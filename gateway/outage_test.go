package gateway

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// withOutageWait runs a worker behind the gateway, as withWorker does, with
// SyncOutageWait set to wait.
func withOutageWait(t *testing.T, wait time.Duration) (bundleOption, func()) {
	return withWorker(t, func(c *Config) { c.SyncOutageWait = wait })
}

// A chat whose job waits for an unreachable target ends once SyncOutageWait has passed:
// the job is canceled and the caller gets 502 saying why, not a connection held until
// the job TTL. A call arriving while the outage has lasted that long is refused at once,
// with no job. Work queued with POST /jobs waits the outage out and runs when the target
// is back.
func TestSyncCallGivesUpOnAnUnreachableTarget(t *testing.T) {
	t.Parallel()
	opt, start := withOutageWait(t, time.Second)
	b := newTestBundle(t, opt)
	b.Fake.SetDown(true)
	batch := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"whenever"}]}`)
	start()

	chat := []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"now"}],"stream":false}`)
	resp, out := b.request(t, http.MethodPost, "/api/chat", chat)
	wantError(t, resp, out, http.StatusBadGateway, "the job was canceled")
	if msg, _ := errorText(out); !strings.Contains(msg, "ollama was unreachable for") {
		t.Errorf("error %q: want it to say the target was unreachable", msg)
	}
	id := resp.Header.Get(HeaderJobID)
	if v := jobsGet(t, b, id); v.State != broker.StateCanceled || !strings.Contains(v.Error, "FOREMAN_SYNC_OUTAGE_WAIT") {
		t.Errorf("the sync job: %s %q, want canceled naming FOREMAN_SYNC_OUTAGE_WAIT", v.State, v.Error)
	}

	// The outage has lasted SyncOutageWait by now: the next call is refused before it
	// becomes a job, streamed or not, on every queued route.
	for _, c := range []struct{ path, body string }{
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"again"}]}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"again","stream":false}`},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"again"}]}`},
	} {
		resp, out = b.request(t, http.MethodPost, c.path, []byte(c.body))
		wantError(t, resp, out, http.StatusBadGateway, "FOREMAN_SYNC_OUTAGE_WAIT")
		if got := resp.Header.Get(HeaderJobID); got != "" {
			t.Errorf("%s refused during the outage carries job %s", c.path, got)
		}
	}
	if n := len(jobsList(t, b, "")); n != 2 {
		t.Errorf("%d jobs, want the batch job and the canceled sync one", n)
	}
	if v := jobsGet(t, b, batch); v.State.Terminal() {
		t.Fatalf("the /jobs job during the outage: %s %q, want it waiting", v.State, v.Error)
	}
	later := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"later"}]}`)

	b.Fake.SetDown(false)
	waitJobState(t, b, batch, broker.StateDone)
	waitJobState(t, b, later, broker.StateDone)
	resp, out = b.request(t, http.MethodPost, "/api/chat", chat)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("chat once the target is back: %d %s", resp.StatusCode, out)
	}
}

// An outage shorter than SyncOutageWait (Ollama restarting) is waited out: the call
// gets its answer once the target is back.
func TestSyncCallWaitsOutAShortOutage(t *testing.T) {
	t.Parallel()
	opt, start := withOutageWait(t, time.Hour)
	b := newTestBundle(t, opt)
	b.Fake.SetDown(true)
	start()
	type answer struct {
		status int
		body   []byte
	}
	got := make(chan answer, 1)
	go func() {
		resp, err := http.Post(b.URL+"/api/chat", "application/json",
			strings.NewReader(`{"model":"tiny-a","messages":[{"role":"user","content":"patience"}],"stream":false}`))
		if err != nil {
			got <- answer{0, []byte(err.Error())}
			return
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		got <- answer{resp.StatusCode, out}
	}()
	eventually(t, 20*time.Second, "the worker paused for the target", func() bool {
		return getQueue(t, b, "").Paused != nil
	})
	b.Fake.SetDown(false)
	if a := <-got; a.status != http.StatusOK {
		t.Fatalf("chat after a short outage: %d %s", a.status, a.body)
	}
}

// A worker learns that its target is back at its next probe, up to 30s into a long
// outage: a call arriving in that window polls the target before it is refused, and the
// poll that gets through wakes the worker (the inventory's OnRecover), which runs the call.
func TestSyncCallOnceTheTargetIsBackIsNotRefused(t *testing.T) {
	t.Parallel()
	back := make(chan struct{}, 1)
	var w *worker.Worker
	b := newTestBundle(t,
		withInventory(func(c *ollama.InventoryConfig) {
			c.OnRecover = func(context.Context) {
				select {
				case back <- struct{}{}:
				default:
				}
			}
		}),
		withGateway(func(c *Config) {
			var err error
			// The worker's own probes come an hour apart: only a wake ends its pause.
			w, err = worker.New(worker.Config{Store: c.Store, Target: c.Target, Inventory: c.Inventory, RetryDelay: time.Hour, TargetBack: back})
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
	chat := []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"now"}],"stream":false}`)
	resp, out := b.request(t, http.MethodPost, "/api/chat", chat)
	wantError(t, resp, out, http.StatusBadGateway, "FOREMAN_SYNC_OUTAGE_WAIT")

	b.Fake.SetDown(false)
	resp, out = b.request(t, http.MethodPost, "/api/chat", chat)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("chat once the target is back, the worker still paused: %d %s", resp.StatusCode, out)
	}
}
