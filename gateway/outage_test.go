package gateway

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
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

// steppedPauses is a worker whose pause began before the wall clock stepped forward by
// step (NTP correcting a slow clock, a laptop waking): Since, a wall time, says the pause
// began step earlier than it did; the pause's monotonic reading is this process's own.
type steppedPauses struct {
	*worker.Worker
	step time.Duration
}

func (s steppedPauses) Paused() *broker.Pause {
	p := s.Worker.Paused()
	if p == nil {
		return nil
	}
	c := *p
	c.Since = c.Since.Add(-s.step)
	return &c
}

// An outage is timed on the monotonic clock: the wall clock stepped an hour forward
// since the worker paused for its unreachable target does not make the outage an hour
// long. A sync call is taken and waits it out (SyncOutageWait a minute), not refused at
// once for FOREMAN_SYNC_OUTAGE_WAIT, and gets its answer once the target is back.
func TestSyncCallWaitsOutAnOutageAcrossAClockStep(t *testing.T) {
	t.Parallel()
	var w *worker.Worker
	b := newTestBundle(t, withGateway(func(c *Config) {
		var err error
		w, err = worker.New(worker.Config{Store: c.Store, Target: c.Target, Inventory: c.Inventory, RetryDelay: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		c.Queue = steppedPauses{Worker: w, step: time.Hour}
		c.SyncOutageWait = time.Minute
	}))
	b.Fake.SetDown(true)
	jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"whenever"}]}`)
	runUntilCleanup(t, "worker", w.Run)
	eventually(t, 20*time.Second, "the worker paused for the target", func() bool {
		p := w.Paused()
		return p != nil && p.Reason == broker.PauseTargetUnreachable
	})
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
	// The call is taken (its job waits) while the target is still down.
	eventually(t, 20*time.Second, "the sync call's job queued", func() bool {
		select {
		case a := <-got:
			t.Fatalf("chat during a minute-old outage: %d %s, want it waiting", a.status, a.body)
		default:
		}
		return len(jobsList(t, b, "")) == 2
	})
	b.Fake.SetDown(false)
	if a := <-got; a.status != http.StatusOK {
		t.Fatalf("chat once the target is back: %d %s", a.status, a.body)
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

// hangAll makes the fake accept every poll and chat and never answer: an Ollama wedged
// as a whole, or a Mac whose network dropped packets mid-way.
func hangAll(b *testBundle) {
	for _, path := range []string{"/api/tags", "/api/ps", "/api/chat"} {
		b.Fake.FailNextOn(path, 1<<20, ollamatest.Hang)
	}
}

// A target that accepts calls and never answers, not even the inventory's polls, is an
// outage as one that refuses them: the chat whose job runs with no answer, and the one
// queued behind it, end with 502 once SyncOutageWait has passed since the polls went
// unanswered, instead of waiting out FOREMAN_FIRST_BYTE_TIMEOUT (5m) each. POST /jobs
// work waits.
func TestSyncCallGivesUpOnAHungTarget(t *testing.T) {
	t.Parallel()
	var logs syncBuffer // the gateway's lines
	opt, start := withWorker(t, func(c *Config) {
		c.SyncOutageWait = time.Second
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	b := newTestBundle(t, opt, withPolling(100*time.Millisecond),
		withInventory(func(c *ollama.InventoryConfig) { c.PollTimeout = 300 * time.Millisecond }))
	eventually(t, 10*time.Second, "the first poll", func() bool { return b.Inv.Snapshot().Polled })
	// The chat hangs first, and the polls only once it runs: a worker that knows the
	// target down takes no job (it waits for the target), and this is about one running.
	b.Fake.FailNextOn("/api/chat", 1<<20, ollamatest.Hang)
	start()

	type answer struct {
		status int
		body   []byte
		job    string
	}
	answers := make(chan answer, 2)
	for _, prompt := range []string{"first", "second"} {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, b.URL+"/api/chat",
				strings.NewReader(`{"model":"tiny-a","messages":[{"role":"user","content":"`+prompt+`"}],"stream":false}`))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				answers <- answer{body: []byte(err.Error())}
				return
			}
			defer resp.Body.Close()
			out, _ := io.ReadAll(resp.Body)
			answers <- answer{resp.StatusCode, out, resp.Header.Get(HeaderJobID)}
		}()
	}
	err := b.Fake.WaitFor(testCtx(t, 30*time.Second), func(calls []ollamatest.Call) bool {
		for _, c := range calls {
			if c.Path == "/api/chat" {
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatalf("no chat reached the target: %v", err)
	}
	b.Fake.FailNextOn("/api/tags", 1<<20, ollamatest.Hang)
	b.Fake.FailNextOn("/api/ps", 1<<20, ollamatest.Hang)
	for range 2 {
		a := <-answers
		if a.status != http.StatusBadGateway || !strings.Contains(string(a.body), "the job was canceled") {
			t.Fatalf("chat to a hung target: %d %s, want 502 saying the job was canceled", a.status, a.body)
		}
		// A running job's cancel is written by the worker, once it has aborted the call.
		waitJobState(t, b, a.job, broker.StateCanceled)
		if v := jobsGet(t, b, a.job); !strings.Contains(v.Error, "FOREMAN_SYNC_OUTAGE_WAIT") {
			t.Errorf("job %s: %s %q, want canceled naming FOREMAN_SYNC_OUTAGE_WAIT", a.job, v.State, v.Error)
		}
	}
	// The queued job's cancel ended it: the gateway says so. The running one's only asked
	// the worker to end it, which logs "job canceled" itself, with its attempt.
	if n, m := strings.Count(logs.String(), `msg="job canceled"`), strings.Count(logs.String(), `msg="job cancel requested"`); n != 1 || m != 1 {
		t.Errorf("gateway logged job canceled %d times and job cancel requested %d times, want once each:\n%s", n, m, logs.String())
	}
	batch := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"whenever"}]}`)
	resp, out := b.request(t, http.MethodPost, "/api/chat", []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"again"}]}`))
	wantError(t, resp, out, http.StatusBadGateway, "FOREMAN_SYNC_OUTAGE_WAIT")
	if v := jobsGet(t, b, batch); v.State.Terminal() {
		t.Errorf("the /jobs job: %s %q, want it waiting", v.State, v.Error)
	}
}

// Before any poll of a hung target ended, POST /jobs for a model foreman does not know
// gets the 502 that says why within the submit's time, not 504 "timed out": the re-poll
// that looks for the model has a bound of its own, shorter than the inventory's.
func TestJobsSubmitToAHungTargetNeverPolledIs502(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withoutInitialPoll(),
		withInventory(func(c *ollama.InventoryConfig) { c.PollTimeout = time.Minute }))
	hangAll(b)
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`))
	wantError(t, resp, out, http.StatusBadGateway, "ollama is unreachable")
}

// A call whose answer has begun is no outage's to end: the target is answering it, and
// a 502 could not be sent after the 200 anyway. It runs on while the polls go unanswered
// past SyncOutageWait (long enough that a call arriving then is refused).
func TestSyncCallAnsweringIsNotEndedByUnansweredPolls(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	opt, start := withOutageWait(t, time.Second)
	b := newTestBundle(t, opt, withPolling(100*time.Millisecond),
		withInventory(func(c *ollama.InventoryConfig) { c.PollTimeout = 300 * time.Millisecond }),
		withFake(ollamatest.WithBeforeToken(func(ctx context.Context, i int) error {
			if i == 1 {
				select {
				case <-gate:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		})))
	start()
	resp := b.send(t, http.MethodPost, "/api/chat", []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"slow"}]}`))
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	first, err := rd.ReadBytes('\n')
	if resp.StatusCode != http.StatusOK || err != nil {
		t.Fatalf("first line: %d %q %v", resp.StatusCode, first, err)
	}

	b.Fake.FailNextOn("/api/tags", 1<<20, ollamatest.Hang)
	b.Fake.FailNextOn("/api/ps", 1<<20, ollamatest.Hang)
	// Twice the bound: the first call's response, which checks its job every quarter
	// second, has seen the outage past the bound several times.
	eventually(t, 20*time.Second, "the polls unanswered for twice SyncOutageWait", func() bool {
		down := b.Inv.Snapshot().DownSince
		return !down.IsZero() && time.Since(down) > 2*time.Second
	})
	refused, out := b.request(t, http.MethodPost, "/api/chat", []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"now"}]}`))
	wantError(t, refused, out, http.StatusBadGateway, "FOREMAN_SYNC_OUTAGE_WAIT")

	close(gate)
	rest, err := io.ReadAll(rd)
	if err != nil || !strings.Contains(string(rest), `"done":true`) || strings.Contains(string(rest), `"error"`) {
		t.Fatalf("the answering call after the polls went unanswered: %v %s", err, rest)
	}
}

// A pass-through call (version, model list, show, embed, management) is bounded by the
// own target's outage as a sync chat is: one waiting on a target that took it and
// answers nothing, not even the polls, gets 502 once the polls have gone unanswered for
// SyncOutageWait, and one arriving after that is refused at once. Before, such a call
// waited with no bound (GET /api/version over ten minutes).
func TestPassThroughGivesUpOnAHungTarget(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withPolling(100*time.Millisecond),
		withInventory(func(c *ollama.InventoryConfig) { c.PollTimeout = 300 * time.Millisecond }),
		withGateway(func(c *Config) { c.SyncOutageWait = time.Second }))
	eventually(t, 10*time.Second, "the first poll", func() bool { return b.Inv.Snapshot().Polled })
	for _, path := range []string{"/api/tags", "/api/ps", "/api/version", "/api/show"} {
		b.Fake.FailNextOn(path, 1<<20, ollamatest.Hang)
	}
	resp, out := b.request(t, http.MethodGet, "/api/version", nil)
	wantError(t, resp, out, http.StatusBadGateway, "FOREMAN_SYNC_OUTAGE_WAIT")
	reached := false
	for _, c := range b.Fake.Calls() {
		reached = reached || c.Path == "/api/version"
	}
	if !reached {
		t.Error("the version call never reached the target: the test proves nothing about a call in flight")
	}
	resp, out = b.request(t, http.MethodPost, "/api/show", []byte(`{"model":"tiny-a"}`))
	wantError(t, resp, out, http.StatusBadGateway, "FOREMAN_SYNC_OUTAGE_WAIT")
}

// Before any poll of a target that takes connections and never answers, /api/tags and
// /api/ps say the target failed (502), not that foreman timed out (504).
func TestInventoryRoutesOfAHungTargetAre502(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withoutInitialPoll(),
		withInventory(func(c *ollama.InventoryConfig) { c.PollTimeout = 300 * time.Millisecond }))
	b.Fake.FailNextOn("/api/tags", 1<<20, ollamatest.Hang)
	b.Fake.FailNextOn("/api/ps", 1<<20, ollamatest.Hang)
	for _, path := range []string{"/api/tags", "/api/ps"} {
		resp, out := b.request(t, http.MethodGet, path, nil)
		wantError(t, resp, out, http.StatusBadGateway, "no answer")
	}
}

// With several Macs, a model another Mac has too is out since the last of them went
// down; one whose foreman does not say since when (an earlier version, one that has not
// polled yet) makes that unknown: a call waits FOREMAN_SYNC_OUTAGE_WAIT from when it saw
// the outage, and is not refused at once because the own Mac has been down longer.
func TestSyncCallWaitsForAnotherMacDownSinceUnknown(t *testing.T) {
	t.Parallel()
	opt, start := withWorker(t, func(c *Config) {
		c.SyncOutageWait = time.Second
		c.TargetName = "own"
		c.TargetClient = func(u string) (ollama.Client, error) { return ollama.NewClient(ollama.ClientConfig{BaseURL: u}) }
	})
	b := newTestBundle(t, opt)
	err := b.Broker.Store.PublishTarget(testCtx(t, 10*time.Second), broker.Target{Name: "other", URL: "http://127.0.0.1:1",
		Models: []string{"tiny-a:latest"}}) // unreachable, DownSince not said
	if err != nil {
		t.Fatal(err)
	}
	b.Fake.SetDown(true)
	start()

	chat := []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"now"}],"stream":false}`)
	resp, out := b.request(t, http.MethodPost, "/api/chat", chat)
	wantError(t, resp, out, http.StatusBadGateway, "the job was canceled")
	// The own Mac has been down longer than SyncOutageWait by now; the other Mac's outage
	// may have begun just now.
	resp, out = b.request(t, http.MethodPost, "/api/chat", chat)
	wantError(t, resp, out, http.StatusBadGateway, "the job was canceled")
	if resp.Header.Get(HeaderJobID) == "" {
		t.Errorf("the second call carries no job: refused at once, want it to wait for the other Mac")
	}
}
