package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// testBundle is a real embedded NATS with the store, the fake Ollama and a client for it.
type testBundle struct {
	b      *brokertest.Bundle
	fake   *ollamatest.Server
	target *ollama.HTTPClient
}

func setup(t *testing.T, opts ...brokertest.Option) *testBundle {
	t.Helper()
	return setupFake(t, nil, opts...)
}

func setupFake(t *testing.T, fakeOpts []ollamatest.Option, opts ...brokertest.Option) *testBundle {
	t.Helper()
	tb := &testBundle{b: brokertest.New(t, opts...), fake: ollamatest.New(t, fakeOpts...)}
	var err error
	tb.target, err = ollama.NewClient(ollama.ClientConfig{BaseURL: tb.fake.URL, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func testLogger() *slog.Logger {
	if os.Getenv("WORKER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// start runs a worker on the bundle's current store until the test ends.
func (tb *testBundle) start(t *testing.T, cfg worker.Config) *worker.Worker {
	t.Helper()
	return tb.startOn(t, tb.b.Store, cfg)
}

// startOn runs a worker on store (another foreman's, say) until the test ends.
func (tb *testBundle) startOn(t *testing.T, store *broker.Store, cfg worker.Config) *worker.Worker {
	t.Helper()
	cfg.Store = store
	if cfg.Target == nil {
		cfg.Target = tb.target
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = 5 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer scancel()
		_ = w.Stop(sctx)
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker Run: %v", err)
		}
	})
	return w
}

func chatBody(model string, n int) string {
	return fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"question %d"}]}`, model, n)
}

// submit queues a job with a known id (so streams can be watched before it runs).
func (tb *testBundle) submit(t *testing.T, model string, kind broker.Kind, body string) *broker.Job {
	t.Helper()
	j, err := tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: model, Kind: kind}, []byte(body))
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return j
}

func (tb *testBundle) chat(t *testing.T, model string, n int) *broker.Job {
	t.Helper()
	return tb.submit(t, model, broker.KindChat, chatBody(model, n))
}

// waitState waits, on the job's state events, until job id is in state want. The watch
// starts before the first read, so no write slips between them, and it sees every state,
// however briefly held.
func (tb *testBundle) waitState(t *testing.T, id string, want broker.State) *broker.Job {
	t.Helper()
	return tb.waitStateWithin(t, id, want, 30*time.Second)
}

// waitStateWithin is waitState with a wait of its own: for a job whose run is long work
// for the machine (an answer of 20,000 tokens, each a frame published, under -race).
func (tb *testBundle) waitStateWithin(t *testing.T, id string, want broker.State, within time.Duration) *broker.Job {
	t.Helper()
	j, err := tb.watchUntil(id, within, func(j *broker.Job) bool { return j.State == want || j.State.Terminal() })
	if err != nil {
		t.Fatalf("job %s: never %s: %v", id, want, err)
	}
	if j.State != want {
		t.Fatalf("job %s ended %s (%s), want %s", id, j.State, j.Error, want)
	}
	return j
}

// waitEnded waits, as waitState does, until job id has ended, whichever way.
func (tb *testBundle) waitEnded(t *testing.T, id string) *broker.Job {
	t.Helper()
	j, err := tb.watchUntil(id, 30*time.Second, func(j *broker.Job) bool { return j.State.Terminal() })
	if err != nil {
		t.Fatalf("job %s: never ended: %v", id, err)
	}
	return j
}

// watchUntil reads job id, then its state events, until stop says so of one (its record
// then), for up to within.
func (tb *testBundle) watchUntil(id string, within time.Duration, stop func(*broker.Job) bool) (*broker.Job, error) {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	w, err := tb.b.Store.WatchJob(ctx, id)
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	j, _, err := tb.b.Store.Get(ctx, id)
	for ; err == nil; j, err = w.Next(ctx) {
		if stop(j) {
			return j, nil
		}
	}
	return nil, err
}

func (tb *testBundle) waitQueueEmpty(t *testing.T) {
	t.Helper()
	eventually(t, 30*time.Second, "queue empty", func() bool {
		n, err := tb.b.Store.QueueLen(ctxT(t))
		return err == nil && n == 0
	})
}

func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// inferenceCalls returns the model of every inference call, in arrival order.
func inferenceCalls(fake *ollamatest.Server) []string {
	var out []string
	for _, c := range fake.Calls() {
		if c.Model != "" && c.Path != "/api/show" {
			out = append(out, c.Model)
		}
	}
	return out
}

// streamWatch collects one job's token stream.
type streamWatch struct {
	ch  chan *nats.Msg
	sub *nats.Subscription
}

func watchStream(t *testing.T, nc *nats.Conn, id string) *streamWatch {
	t.Helper()
	ch := make(chan *nats.Msg, 1024)
	sub, err := nc.ChanSubscribe(broker.StreamSubject(id), ch)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return &streamWatch{ch: ch, sub: sub}
}

// untilFinal returns the frames (checking Foreman-Seq is 1, 2, 3…) and the final marker.
func (s *streamWatch) untilFinal(t *testing.T) (frames []*nats.Msg, final *nats.Msg) {
	t.Helper()
	ctx := waitCtx(t)
	for {
		select {
		case m := <-s.ch:
			seq, _ := strconv.Atoi(m.Header.Get(broker.HeaderSeq))
			if want := len(frames) + 1; seq != want {
				t.Fatalf("Foreman-Seq %d, want %d", seq, want)
			}
			if m.Header.Get(broker.HeaderFinal) != "" {
				return frames, m
			}
			frames = append(frames, m)
		case <-ctx.Done():
			t.Fatalf("no final marker; %d frames", len(frames))
		}
	}
}

// stateWatch records every state event of one job.
type stateWatch struct {
	ch chan *nats.Msg
}

func watchStates(t *testing.T, nc *nats.Conn, id string) *stateWatch {
	t.Helper()
	ch := make(chan *nats.Msg, 1024)
	sub, err := nc.ChanSubscribe(broker.StateSubject(id), ch)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return &stateWatch{ch: ch}
}

// statesOf is every state job id's record went through, oldest first, read from the job
// bucket's history (16 revisions): read once the job has ended, it has the states a watch
// begun after the submit may miss (an idle worker takes a job as it is published).
func statesOf(t *testing.T, tb *testBundle, id string) []broker.State {
	t.Helper()
	hist, err := tb.b.JobRecords(t).History(ctxT(t), "job."+id)
	if err != nil {
		t.Fatal(err)
	}
	var out []broker.State
	for _, e := range hist {
		if rec, err := broker.DecodeJob(e.Value()); err == nil {
			out = append(out, rec.State)
		}
	}
	return out
}

// until returns the states seen up to and including the first terminal one.
func (s *stateWatch) until(t *testing.T) []broker.State {
	t.Helper()
	ctx := waitCtx(t)
	var out []broker.State
	for {
		select {
		case m := <-s.ch:
			j, err := broker.DecodeJob(m.Data)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, j.State)
			if j.State.Terminal() {
				return out
			}
		case <-ctx.Done():
			t.Fatalf("no terminal state; saw %v", out)
		}
	}
}

// finishedCalls counts the fake's model calls that ran to their end, not canceled.
func finishedCalls(fake *ollamatest.Server) int {
	n := 0
	for _, c := range fake.Calls() {
		if c.Model != "" && c.Finished && !c.Canceled {
			n++
		}
	}
	return n
}

func contains[T comparable](s []T, v T) bool { return slices.Contains(s, v) }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// eventually checks cond at once and then every 5ms until it holds; it fails t with
// what if within passes first. cond runs on the test's goroutine and may call t.Fatal.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	worker.Until(t, within, what, cond)
}

// waitBetweenJobs waits until w runs no job: the last attempt's end is booked, which a
// job's done record comes before (the worker acknowledges its message after it).
func waitBetweenJobs(t *testing.T, w *worker.Worker) {
	t.Helper()
	eventually(t, 10*time.Second, "the worker between jobs", func() bool {
		v, err := w.QueueView(ctxT(t), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return v.Running == ""
	})
}

// polledInventory is an inventory of the bundle's fake, polled once.
func (tb *testBundle) polledInventory(t *testing.T) *ollama.Inventory {
	t.Helper()
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: tb.target, Logger: testLogger()})
	if err := inv.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	return inv
}

// goSilent takes the fake down and has inv poll it: from then on the inventory says the
// target has answered no poll (Snapshot.DownSince).
func (tb *testBundle) goSilent(t *testing.T, inv *ollama.Inventory) {
	t.Helper()
	tb.fake.SetDown(true)
	// A poll begun before may be in flight, and answered: a check joins it.
	eventually(t, 10*time.Second, "a poll of the down target unanswered", func() bool {
		return inv.Refresh(ctxT(t)) != nil && !inv.Snapshot().DownSince.IsZero()
	})
}

// tagged submits a chat of model in class whose message is tag (tagRE finds it in the
// target's calls).
func (tb *testBundle) tagged(t *testing.T, tag, model string, class broker.Priority) *broker.Job {
	t.Helper()
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}]}`, model, tag)
	j, err := tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: model, Kind: broker.KindChat, Priority: class}, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// seedsFromEnv is the seeds of a random-workload test: the environment variable env
// names one (a failure's) or a range from-to to explore; unset, the defaults.
func seedsFromEnv(t *testing.T, env string, defaults ...uint64) []uint64 {
	t.Helper()
	s := os.Getenv(env)
	if s == "" {
		return defaults
	}
	from, to, _ := strings.Cut(s, "-")
	a, err := strconv.ParseUint(from, 10, 64)
	b := a
	if err == nil && to != "" {
		b, err = strconv.ParseUint(to, 10, 64)
	}
	if err != nil {
		t.Fatalf("%s=%q: %v", env, s, err)
	}
	var seeds []uint64
	for n := a; n <= b; n++ {
		seeds = append(seeds, n)
	}
	return seeds
}
