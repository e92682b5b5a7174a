package app_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// hookCall is one webhook request a receiver got: its webhook-id and the event's state.
type hookCall struct {
	id    string
	state broker.State
}

// crashReceiver is a webhook receiver that records every request; while gate is set, a
// request waits for it (or the test's end) before it is answered with answer.
type crashReceiver struct {
	*httptest.Server
	mu     sync.Mutex
	calls  []hookCall
	got    chan hookCall // each request as it arrives
	answer chan int      // the status of held requests; nil answers 204 at once
}

func newCrashReceiver(t *testing.T) *crashReceiver {
	r := &crashReceiver{got: make(chan hookCall, 64)}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		var ev struct {
			State broker.State `json:"state"`
		}
		_ = json.Unmarshal(b, &ev)
		c := hookCall{id: req.Header.Get("webhook-id"), state: ev.State}
		r.mu.Lock()
		r.calls = append(r.calls, c)
		answer := r.answer
		r.mu.Unlock()
		r.got <- c
		status := http.StatusNoContent
		if answer != nil {
			select {
			case status = <-answer:
			case <-req.Context().Done():
				return
			}
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *crashReceiver) hold() chan int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answer = make(chan int, 1)
	return r.answer
}

func (r *crashReceiver) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answer = nil
}

func (r *crashReceiver) seen() []hookCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// waitHook waits for the receiver's next request of state.
func (r *crashReceiver) waitHook(t *testing.T, state broker.State) hookCall {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case c := <-r.got:
			if c.state == state {
				return c
			}
		case <-timeout:
			t.Fatalf("no %s webhook arrived; seen %v", state, r.seen())
		}
	}
}

// crashStep is a point of a job's life foreman is killed right after.
type crashStep struct {
	name string
	sync bool // a sync chat (/api/chat) rather than an async job (/jobs)
	// at brings the job to the step, foreman running; it returns when foreman is to die.
	at func(t *testing.T, c *crashCase)
	// ends are the ends the job may have after the restart (the first is the async one).
	ends []broker.State
	// finished is the target's completed runs of the job: after the restart the job ran to
	// its end exactly this many times in all.
	finished int
	// after, when set, runs on the restarted foreman before the job's end is waited for.
	after func(t *testing.T, c *crashCase)
}

// crashCase is one step's run: foreman, its target, the webhook receiver and the job.
type crashCase struct {
	a       *app.App
	mac     *ollamatest.Server
	hooks   *crashReceiver
	release func() // lets the target's held calls go on
	id      string
	syncEnd chan struct{} // closed when a sync call ends
}

func (c *crashCase) record(t *testing.T) *broker.Job {
	t.Helper()
	j, _, err := c.a.Store().Get(context.Background(), c.id)
	if err != nil {
		t.Fatalf("job %s: %v", c.id, err)
	}
	return j
}

func (c *crashCase) submitAsync(t *testing.T) {
	t.Helper()
	code, b := call(t, c.a, http.MethodPost, "/jobs", `{"model":"alpha","messages":[{"role":"user","content":"crash step"}],`+
		`"stream":false,"state_webhook_url":"`+c.hooks.URL+`/hook","webhook_events":["done","failed","canceled"]}`)
	if code != http.StatusAccepted {
		t.Fatalf("/jobs: %d %s", code, b)
	}
	var job struct {
		ID string `json:"job_id"`
	}
	_ = json.Unmarshal(b, &job)
	c.id = job.ID
}

// submitKeyed posts the async job with an Idempotency-Key.
func (c *crashCase) submitKeyed(t *testing.T) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+c.a.Addr()+"/jobs", strings.NewReader(
		`{"model":"alpha","messages":[{"role":"user","content":"crash step"}],"stream":false,`+
			`"state_webhook_url":"`+c.hooks.URL+`/hook","webhook_events":["done","failed","canceled"]}`))
	req.Header.Set("Idempotency-Key", "crash-step-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var job struct {
		ID string `json:"job_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&job); err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("keyed submit: %d %v", resp.StatusCode, err)
	}
	c.id = job.ID
}

// Every step of a job's life that writes to the store, foreman killed right after it (its
// embedded NATS server gone first, nothing of its orderly stop), then started again on
// the same data directory: the job ends exactly once, as the docs say for its kind, its
// record telling its end and holding its answer, GET /jobs/{id} saying so, nothing left
// queued or running, and an async job's done webhook delivered at least once, always
// under the same webhook-id.
func TestCrashAtEveryStepOfAJob(t *testing.T) {
	t.Parallel()
	async := func(c *crashCase, t *testing.T) { c.submitAsync(t) }
	steps := []crashStep{
		{name: "async accepted", at: func(t *testing.T, c *crashCase) { async(c, t) },
			ends: []broker.State{broker.StateDone}, finished: 1},
		{name: "async started", at: func(t *testing.T, c *crashCase) {
			async(c, t)
			if err := c.mac.WaitStarted(ctxFor(t), "alpha", 1); err != nil {
				t.Fatal(err)
			}
			eventually(t, 20*time.Second, "the start stored", func() bool { return c.record(t).Attempt == 1 })
		}, ends: []broker.State{broker.StateDone}, finished: 1},
		{name: "async done stored", at: func(t *testing.T, c *crashCase) {
			async(c, t)
			c.release()
			eventually(t, 20*time.Second, "the job done", func() bool { return c.record(t).State == broker.StateDone })
		}, ends: []broker.State{broker.StateDone}, finished: 1},
		{name: "webhook sent, unanswered", at: func(t *testing.T, c *crashCase) {
			c.hooks.hold()
			async(c, t)
			c.release()
			c.hooks.waitHook(t, broker.StateDone)
		}, ends: []broker.State{broker.StateDone}, finished: 1},
		{name: "webhook answered", at: func(t *testing.T, c *crashCase) {
			async(c, t)
			c.release()
			c.hooks.waitHook(t, broker.StateDone)
		}, ends: []broker.State{broker.StateDone}, finished: 1},
		{name: "webhook answered 500", at: func(t *testing.T, c *crashCase) {
			answer := c.hooks.hold()
			answer <- http.StatusInternalServerError
			async(c, t)
			c.release()
			c.hooks.waitHook(t, broker.StateDone)
			eventually(t, 20*time.Second, "the failed try logged", func() bool {
				log, _ := c.a.Store().Deliveries(context.Background(), c.id)
				return len(log) > 0
			})
		}, ends: []broker.State{broker.StateDone}, finished: 1},
		{name: "async retrying after a dropped connection", at: func(t *testing.T, c *crashCase) {
			c.mac.FailNextOn("/api/chat", 1, ollamatest.DropConnection)
			c.release()
			async(c, t)
			eventually(t, 20*time.Second, "the job retrying", func() bool { return c.record(t).State == broker.StateRetrying })
		}, ends: []broker.State{broker.StateDone}, finished: 1},
		{name: "async failed by the target", at: func(t *testing.T, c *crashCase) {
			c.mac.FailNextOn("/api/chat", 1, ollamatest.Fail500)
			c.release()
			async(c, t)
			eventually(t, 20*time.Second, "the job failed", func() bool { return c.record(t).State == broker.StateFailed })
		}, ends: []broker.State{broker.StateFailed}, finished: 0},
		{name: "async canceled while running", at: func(t *testing.T, c *crashCase) {
			async(c, t)
			if err := c.mac.WaitStarted(ctxFor(t), "alpha", 1); err != nil {
				t.Fatal(err)
			}
			if code, b := call(t, c.a, http.MethodDelete, "/jobs/"+c.id, ""); code >= 300 {
				t.Fatalf("DELETE: %d %s", code, b)
			}
		}, ends: []broker.State{broker.StateCanceled}, finished: 0},
		{name: "async accepted, retried with its key", at: func(t *testing.T, c *crashCase) {
			c.submitKeyed(t)
		}, after: func(t *testing.T, c *crashCase) {
			first := c.id
			c.submitKeyed(t)
			if c.id != first {
				t.Fatalf("the retry with the same Idempotency-Key made job %s, want %s", c.id, first)
			}
		}, ends: []broker.State{broker.StateDone}, finished: 1},
		{name: "sync running", sync: true, at: func(t *testing.T, c *crashCase) {
			c.syncChat(t)
			if err := c.mac.WaitStarted(ctxFor(t), "alpha", 1); err != nil {
				t.Fatal(err)
			}
			eventually(t, 20*time.Second, "the start stored", func() bool { return c.record(t).Attempt == 1 })
		}, ends: []broker.State{broker.StateCanceled}, finished: 0},
		{name: "sync answered", sync: true, at: func(t *testing.T, c *crashCase) {
			c.syncChat(t)
			c.release()
			<-c.syncEnd
		}, ends: []broker.State{broker.StateDone, broker.StateCanceled}, finished: 1},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			t.Parallel()
			runCrashStep(t, step)
		})
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// syncChat posts a sync chat in the background; its id is known once its answer began
// (the job id header).
func (c *crashCase) syncChat(t *testing.T) {
	t.Helper()
	c.syncEnd = make(chan struct{})
	ids := make(chan string, 1)
	go func() {
		defer close(c.syncEnd)
		req, _ := http.NewRequest(http.MethodPost, "http://"+c.a.Addr()+"/api/chat",
			strings.NewReader(`{"model":"alpha","messages":[{"role":"user","content":"crash step"}],"stream":false}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			ids <- ""
			return
		}
		defer resp.Body.Close()
		ids <- resp.Header.Get("X-Foreman-Job-Id")
		_, _ = io.Copy(io.Discard, resp.Body)
	}()
	eventually(t, 20*time.Second, "the sync job listed", func() bool {
		jobs, _, err := c.a.Store().List(context.Background(), broker.ListOptions{Limit: 10})
		if err == nil && len(jobs) == 1 {
			c.id = jobs[0].ID
		}
		return c.id != ""
	})
	_ = ids
}

func runCrashStep(t *testing.T, step crashStep) {
	mac := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	var once sync.Once
	hold := mac.Hold("alpha")
	c := &crashCase{mac: mac, hooks: newCrashReceiver(t), release: func() { once.Do(hold) }}
	t.Cleanup(c.release)
	dir := t.TempDir()
	start := func() *app.App {
		cfg := app.Config{Addr: "127.0.0.1:0", DataDir: dir, OllamaURL: mac.URL, TargetName: "studio",
			PollInterval: 200 * time.Millisecond, MaxAttempts: 3}
		allowLoopbackWebhooks(&cfg)
		a, err := app.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stopForeman(t, a) })
		return a
	}
	c.a = start()
	step.at(t, c)
	c.a.Crash()
	if c.syncEnd != nil {
		<-c.syncEnd
	}

	c.hooks.release()
	c.a = start()
	if step.after != nil {
		step.after(t, c)
	}
	c.release()
	var end *broker.Job
	eventually(t, 30*time.Second, "the job ended", func() bool {
		end = c.record(t)
		return end.State.Terminal()
	})
	if !slices.Contains(step.ends, end.State) {
		t.Fatalf("job %s ended %s (%q), want one of %v", c.id, end.State, end.Error, step.ends)
	}
	// GET /jobs/{id} tells the same.
	code, b := call(t, c.a, http.MethodGet, "/jobs/"+c.id, "")
	var view struct {
		State  broker.State    `json:"state"`
		Result json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(b, &view); code != http.StatusOK || err != nil || view.State != end.State {
		t.Fatalf("GET /jobs/%s: %d %s, want %s", c.id, code, b, end.State)
	}
	if end.State == broker.StateDone && (len(view.Result) == 0 || string(view.Result) == "null") {
		t.Errorf("job %s done without its result: %s", c.id, b)
	}
	// Nothing stays queued or running.
	eventually(t, 30*time.Second, "the queue empty and the target idle", func() bool {
		n, err := c.a.Store().QueueLen(context.Background())
		return err == nil && n == 0 && mac.InFlight() == 0
	})
	finished := 0
	for _, call := range mac.Calls() {
		if call.Path == "/api/chat" && call.Finished && !call.Canceled && call.Failure == "" {
			finished++
		}
	}
	if finished != step.finished {
		t.Errorf("the target completed the job %d times, want %d (ended %s)", finished, step.finished, end.State)
	}
	// One terminal revision.
	hist, err := brokertest.JobRecords(t, c.a.Conn()).History(context.Background(), "job."+c.id)
	if err != nil {
		t.Fatal(err)
	}
	terminal, doneRev := 0, uint64(0)
	for _, e := range hist {
		if j, err := broker.DecodeJob(e.Value()); err == nil && j.State.Terminal() {
			terminal++
			doneRev = e.Revision()
		}
	}
	if terminal != 1 {
		t.Errorf("job %s: %d terminal revisions, want 1", c.id, terminal)
	}
	if step.sync {
		return
	}
	// The async job's done webhook: delivered (a 2xx) at least once, under one webhook-id,
	// that of the done revision.
	want := c.id + "-" + itoa(doneRev)
	eventually(t, 30*time.Second, "the end's webhook delivered", func() bool {
		log, _ := c.a.Store().Deliveries(context.Background(), c.id)
		for _, a := range log {
			if a.State == end.State && a.Outcome == broker.OutcomeDelivered {
				return true
			}
		}
		return false
	})
	for _, h := range c.hooks.seen() {
		if h.state == end.State && h.id != want {
			t.Errorf("done webhook sent as %q, want %q: %v", h.id, want, c.hooks.seen())
		}
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// takenStore is the dispatcher's store whose storing of a pending delivery waits for
// crashed: the dispatcher has taken the event from the job bucket's stream and not yet
// acked it when foreman dies.
type takenStore struct {
	webhook.Store
	stored  bool // the pending delivery is stored first: foreman dies before the event's ack
	taken   chan struct{}
	crashed chan struct{}
	once    sync.Once
}

func (s *takenStore) AddPendingDelivery(ctx context.Context, p broker.PendingDelivery) (uint64, bool, error) {
	if s.stored {
		if _, _, err := s.Store.AddPendingDelivery(ctx, p); err != nil {
			return 0, false, err
		}
	}
	s.once.Do(func() { close(s.taken) })
	select {
	case <-s.crashed:
	case <-ctx.Done(): // the crash's end of the dispatcher
	}
	return 0, false, context.Canceled
}

// A job's event the webhook dispatcher had taken, but not stored nor acked, when foreman
// died is delivered as soon as foreman is back on its own data directory: no other
// process can hold it, as no other can hold a queue job (ADR-0024), so it does not wait
// out the dispatcher's ack wait (60 s).
func TestCrashWithAWebhookEventTakenDeliversItAtOnce(t *testing.T) {
	t.Parallel()
	for _, stored := range []bool{false, true} {
		name := "taken"
		if stored {
			name = "stored as pending, not acked"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			crashWithAWebhookEventTaken(t, stored)
		})
	}
}

func crashWithAWebhookEventTaken(t *testing.T, stored bool) {
	mac := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	hooks := newCrashReceiver(t)
	dir := t.TempDir()
	ts := &takenStore{stored: stored, taken: make(chan struct{}), crashed: make(chan struct{})}
	start := func(wrap bool) *app.App {
		cfg := app.Config{Addr: "127.0.0.1:0", DataDir: dir, OllamaURL: mac.URL, TargetName: "studio", PollInterval: 200 * time.Millisecond}
		allowLoopbackWebhooks(&cfg)
		if wrap {
			cfg.Components.Webhooks = func(c *webhook.Config) {
				ts.Store = c.Store
				c.Store = ts
			}
		}
		a, err := app.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stopForeman(t, a) })
		return a
	}
	c := &crashCase{a: start(true), mac: mac, hooks: hooks}
	c.submitAsync(t)
	select {
	case <-ts.taken:
	case <-time.After(30 * time.Second):
		t.Fatal("the dispatcher took no event")
	}
	c.a.Crash()
	close(ts.crashed)

	c.a = start(false)
	eventually(t, 20*time.Second, "the job done", func() bool { return c.record(t).State == broker.StateDone })
	first := hooks.waitHook(t, broker.StateDone) // within 30 s, below the 60 s ack wait
	eventually(t, 20*time.Second, "the delivery logged", func() bool {
		log, _ := c.a.Store().Deliveries(context.Background(), c.id)
		return len(log) > 0 && log[len(log)-1].Outcome == broker.OutcomeDelivered
	})
	for _, h := range hooks.seen() {
		if h.id != first.id {
			t.Errorf("webhook sent as %q and %q", first.id, h.id)
		}
	}
	// The attempt is logged before its pending delivery is removed.
	eventually(t, 20*time.Second, "no pending delivery left", func() bool {
		p, err := c.a.Store().PendingDeliveries(context.Background())
		if err != nil {
			t.Fatalf("pending deliveries: %v", err)
		}
		return len(p) == 0
	})
}
