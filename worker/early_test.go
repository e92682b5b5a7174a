package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// earlyBundle is a worker with EarlyCall on whose last job ran tiny-a, driven step by
// step: the tests play the loop's part (callEarly, NextWait, handle).
type earlyBundle struct {
	b      *brokertest.Bundle
	fake   *ollamatest.Server
	target *countingTarget
	w      *Worker
	ctx    context.Context
}

func newEarlyBundle(t *testing.T) *earlyBundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	b := brokertest.New(t)
	fake := ollamatest.New(t)
	client, err := ollama.NewClient(ollama.ClientConfig{BaseURL: fake.URL, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	target := &countingTarget{Client: client}
	w, err := New(Config{Store: b.Store, Target: target, EarlyCall: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	eb := &earlyBundle{b: b, fake: fake, target: target, w: w, ctx: ctx}
	tokenA := eb.token(t, "tiny-a")
	w.begin(tokenA, true, func(error) {}) // tiny-a ran last, answered: it is loaded
	w.called(tokenA, true, false, false)
	w.end()
	return eb
}

// token is the queue token of a chat job of model.
func (eb *earlyBundle) token(t *testing.T, model string) string {
	t.Helper()
	k, err := broker.KeyOf(&broker.Job{Model: model, Kind: broker.KindChat}, []byte(chatBodyOf(model)))
	if err != nil {
		t.Fatal(err)
	}
	return k.String()
}

// runFrom stores job j's record (its queue message published with wake-up u), leases
// the message and runs the job from early call ec, in ctx, to its end.
func (eb *earlyBundle) runFrom(t *testing.T, ctx context.Context, j *broker.Job, u wakeup, ec *earlyCall) {
	t.Helper()
	eb.b.CreateRecord(t, j)
	d, err := eb.b.Store.NextWait(eb.ctx, u.token, 15*time.Second)
	if err != nil || d == nil {
		t.Fatalf("lease: %v, %v", d, err)
	}
	eb.w.handle(ctx, d, nil, ec)
	eb.w.bg.Wait()
}

// wantDoneAtFirstAttempt returns job id's record, failing the test unless the job is
// done at its first attempt.
func (eb *earlyBundle) wantDoneAtFirstAttempt(t *testing.T, id string) *broker.Job {
	t.Helper()
	rec, _, err := eb.b.Store.Get(eb.ctx, id)
	if err != nil || rec.State != broker.StateDone || rec.Attempt != 1 {
		t.Fatalf("record: %+v, %v; want done at attempt 1", rec, err)
	}
	return rec
}

// until polls cond until it holds, failing the test after within.
func until(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(within)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("%s: not within %v", what, within)
		}
	}
}

func chatBodyOf(model string) string {
	return fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}],"stream":true}`, model)
}

// publish publishes a chat job's queue message with no record yet, as the first half of
// a submit, and returns the job and the wake-up an idle worker gets for it.
func (eb *earlyBundle) publish(t *testing.T) (*broker.Job, wakeup) {
	t.Helper()
	j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	eb.b.PublishBare(t, j, chatBodyOf("tiny-a"))
	return j, wakeup{token: eb.token(t, "tiny-a"), jobID: j.ID, kind: broker.KindChat, body: []byte(chatBodyOf("tiny-a")), fresh: true}
}

func (eb *earlyBundle) chatCalls() []ollamatest.Call {
	var out []ollamatest.Call
	for _, c := range eb.fake.Calls() {
		if c.Path == "/api/chat" {
			out = append(out, c)
		}
	}
	return out
}

// countingTarget tells the most target calls that were ever under way at once.
type countingTarget struct {
	ollama.Client
	mu        sync.Mutex
	now, most int
}

func (c *countingTarget) Stream(ctx context.Context, path string, body []byte, fn func([]byte) error, opts ...ollama.StreamOption) (string, error) {
	c.mu.Lock()
	c.now++
	c.most = max(c.most, c.now)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.now--
		c.mu.Unlock()
	}()
	return c.Client.Stream(ctx, path, body, fn, opts...)
}

func (c *countingTarget) mostAtOnce() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.most
}

// subscribeStream takes every message of job id's stream subject.
func subscribeStream(t *testing.T, nc *nats.Conn, id string) *nats.Subscription {
	t.Helper()
	sub, err := nc.SubscribeSync(broker.StreamSubject(id))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return sub
}

// An idle worker calls the target as it sees a job published, before the job has a
// record or the worker its lease; the job's run adopts that call: one call, no frame
// published before the run adopted it (after that the frames wait for the stored start
// like any call's: TestStartWriteOverlapsCallNoFrameBeforeIt), the job done.
func TestEarlyCallIsAdoptedByItsRun(t *testing.T) {
	eb := newEarlyBundle(t)
	j, u := eb.publish(t)
	stream := subscribeStream(t, eb.b.Conn, j.ID)

	ec := eb.w.callEarly(eb.ctx, u)
	if ec == nil {
		t.Fatal("no early call for a published job of the loaded model")
	}
	until(t, 10*time.Second, "the target called", func() bool { return len(eb.chatCalls()) == 1 })
	if _, _, err := eb.b.Store.Get(eb.ctx, j.ID); err == nil {
		t.Fatal("the job has a record; the call was to come before it")
	}
	if m, err := stream.NextMsg(50 * time.Millisecond); err == nil {
		t.Fatalf("a frame went out before the job's run adopted the call: %q", m.Data)
	}

	eb.runFrom(t, eb.ctx, j, u, ec)
	eb.wantDoneAtFirstAttempt(t, j.ID)
	if n := len(eb.chatCalls()); n != 1 {
		t.Fatalf("%d target calls, want the one early call", n)
	}
	first, err := stream.NextMsg(15 * time.Second)
	if err != nil {
		t.Fatalf("no frame: %v", err)
	}
	if first.Header.Get(broker.HeaderSeq) != "1" || len(first.Data) == 0 {
		t.Fatalf("first message: %v %q", first.Header, first.Data)
	}
}

// A job that is not to run (canceled before its run) drops its early call: the call is
// aborted, nothing of it is published, and the job stays canceled.
func TestEarlyCallOfACanceledJobIsDropped(t *testing.T) {
	eb := newEarlyBundle(t)
	eb.fake.FailNext(1, ollamatest.Hang) // the call would never end on its own
	j, u := eb.publish(t)
	stream := subscribeStream(t, eb.b.Conn, j.ID)
	ec := eb.w.callEarly(eb.ctx, u)
	if ec == nil {
		t.Fatal("no early call")
	}
	until(t, 10*time.Second, "the target called", func() bool { return len(eb.chatCalls()) == 1 })
	// Canceled between its publish and its run; its message is still queued (a crash
	// between the cancel's record write and its removal of the message leaves this).
	now := time.Now().UTC()
	j.State, j.CreatedAt, j.At, j.Error = broker.StateCanceled, now, now, "test"
	rec, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eb.b.JobRecords(t).Create(eb.ctx, "job."+j.ID, rec); err != nil {
		t.Fatal(err)
	}
	d, err := eb.b.Store.NextWait(eb.ctx, u.token, 15*time.Second)
	if err != nil || d == nil {
		t.Fatalf("lease: %v, %v", d, err)
	}
	eb.w.handle(eb.ctx, d, nil, ec) // returns only once the hung call is aborted
	select {
	case <-ec.done:
	default:
		t.Fatal("handle returned with the early call still running")
	}
	if m, err := stream.NextMsg(50 * time.Millisecond); err == nil {
		t.Fatalf("a dropped call published %v %q", m.Header, m.Data)
	}
	until(t, 10*time.Second, "the fake saw the call canceled", func() bool {
		c := eb.chatCalls()
		return len(c) == 1 && c[0].Canceled
	})
	if rec, _, err := eb.b.Store.Get(eb.ctx, j.ID); err != nil || rec.State != broker.StateCanceled {
		t.Fatalf("record: %+v, %v; want canceled", rec, err)
	}
}

// When the woken job's queue delivers another message first, the early call is dropped
// before that job runs (never two calls at once), and the woken job runs later on a call
// of its own.
func TestEarlyCallOfAnotherJobIsDroppedBeforeTheDeliveredOneRuns(t *testing.T) {
	eb := newEarlyBundle(t)
	eb.fake.FailNext(1, ollamatest.Hang) // the early call would never end on its own
	first, _ := eb.publish(t)
	eb.b.CreateRecord(t, first)
	second, u := eb.publish(t)
	eb.b.CreateRecord(t, second)
	ec := eb.w.callEarly(eb.ctx, u) // the wake-up of the second replaced the first's
	if ec == nil {
		t.Fatal("no early call")
	}
	until(t, 10*time.Second, "the target called", func() bool { return len(eb.chatCalls()) == 1 })

	for _, want := range []*broker.Job{first, second} {
		d, err := eb.b.Store.NextWait(eb.ctx, u.token, 15*time.Second)
		if err != nil || d == nil || d.JobID != want.ID {
			t.Fatalf("lease: %+v, %v; want job %s", d, err, want.ID)
		}
		eb.w.handle(eb.ctx, d, nil, ec)
		ec = nil
		eb.w.bg.Wait()
		if rec, _, err := eb.b.Store.Get(eb.ctx, want.ID); err != nil || rec.State != broker.StateDone {
			t.Fatalf("job %s: %+v, %v; want done", want.ID, rec, err)
		}
	}
	if n := eb.target.mostAtOnce(); n != 1 {
		t.Fatalf("%d target calls under way at once, want 1", n)
	}
	calls := eb.chatCalls()
	if len(calls) != 3 || !calls[0].Canceled {
		t.Fatalf("target calls: %d (first canceled: %v); want the dropped early call, then one per job", len(calls), len(calls) > 0 && calls[0].Canceled)
	}
}

// No early call where it may not be made: EarlyCall off, a model not loaded (the call
// would swap it in), a body stored apart, a wake-up left over from while a job ran.
func TestNoEarlyCallWhereItMayNotBeMade(t *testing.T) {
	eb := newEarlyBundle(t)
	_, u := eb.publish(t)
	other := u
	other.token = eb.token(t, "tiny-b")
	bare := u
	bare.body = nil
	stale := u
	stale.fresh = false
	for name, c := range map[string]struct {
		early bool
		u     wakeup
	}{"off": {false, u}, "not loaded": {true, other}, "body apart": {true, bare}, "stale": {true, stale}} {
		eb.w.cfg.EarlyCall = c.early
		if ec := eb.w.callEarly(eb.ctx, c.u); ec != nil {
			eb.w.drop(ec)
			t.Errorf("%s: an early call was made", name)
		}
	}
	if n := len(eb.chatCalls()); n != 0 {
		t.Fatalf("%d target calls", n)
	}
}

// childCounter is a context that counts the cancelable contexts derived straight from it
// that are still registered with it (the context package's AfterFunc protocol): a child
// never canceled stays registered for the parent's life, a leak per job.
type childCounter struct {
	context.Context
	done chan struct{} // its own, never closed: so children register through AfterFunc
	mu   sync.Mutex
	live int
}

func (c *childCounter) Done() <-chan struct{} { return c.done }
func (c *childCounter) Err() error            { return nil }

func (c *childCounter) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	c.live++
	c.mu.Unlock()
	inner := context.AfterFunc(c.Context, f)
	var once sync.Once
	return func() bool {
		once.Do(func() {
			c.mu.Lock()
			c.live--
			c.mu.Unlock()
		})
		return inner()
	}
}

func (c *childCounter) children() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.live
}

// A run that adopts an early call leaves no context registered with the worker's.
func TestAdoptedEarlyCallLeavesNoContextBehind(t *testing.T) {
	eb := newEarlyBundle(t)
	parent := &childCounter{Context: eb.ctx, done: make(chan struct{})}
	for range 3 {
		j, u := eb.publish(t)
		ec := eb.w.callEarly(parent, u)
		if ec == nil {
			t.Fatal("no early call")
		}
		eb.runFrom(t, parent, j, u, ec)
		if rec, _, err := eb.b.Store.Get(eb.ctx, j.ID); err != nil || rec.State != broker.StateDone {
			t.Fatalf("record: %+v, %v; want done", rec, err)
		}
	}
	if n := parent.children(); n != 0 {
		t.Fatalf("%d contexts still registered with the worker's after 3 jobs", n)
	}
}

// runLoop runs w until the test ends.
func runLoop(t *testing.T, w *Worker) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker Run: %v", err)
		}
	})
}

// idleWatch tells, through Config.onIdle, how long the loop's latest wait may last.
type idleWatch struct{ last atomic.Int64 }

func watchIdle(w *Worker) *idleWatch {
	iw := &idleWatch{}
	w.cfg.onIdle = func(d time.Duration) { iw.last.Store(int64(d)) }
	return iw
}

// waitIdle waits until the loop waits for a wake-up in its long idle wait (IdlePoll), not
// in one of the short rechecks after a job, which end by themselves and look at the queue.
func (iw *idleWatch) waitIdle(t *testing.T, w *Worker) {
	t.Helper()
	until(t, 10*time.Second, "the worker idle", func() bool {
		return w.idling.Load() && time.Duration(iw.last.Load()) >= time.Second
	})
}

// waitDone waits until job id's record is done.
func (eb *earlyBundle) waitDone(t *testing.T, id string) {
	t.Helper()
	until(t, 10*time.Second, "job "+id+" done", func() bool {
		rec, _, err := eb.b.Store.Get(eb.ctx, id)
		return err == nil && rec.State == broker.StateDone
	})
}

// The Run loop: a job submitted to an idle worker of a loaded model is called before the
// worker holds its queue message (ADR-0034), and runs once.
func TestIdleWorkerCallsTheTargetBeforeItHoldsTheJob(t *testing.T) {
	eb := newEarlyBundle(t)
	var mu sync.Mutex
	order := map[string][]string{}
	eb.w.cfg.Trace = func(id, stage string) {
		mu.Lock()
		order[id] = append(order[id], stage)
		mu.Unlock()
	}
	eb.w.cfg.IdlePoll = time.Hour
	iw := watchIdle(eb.w)
	runLoop(t, eb.w)
	const jobs = 4
	for i := range jobs {
		iw.waitIdle(t, eb.w)
		j, err := eb.b.Store.Submit(eb.ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat, Sync: i%2 == 0}, []byte(chatBodyOf("tiny-a")))
		if err != nil {
			t.Fatal(err)
		}
		eb.waitDone(t, j.ID)
		mu.Lock()
		stages := order[j.ID]
		mu.Unlock()
		called, fetched := slices.Index(stages, StageCalled), slices.Index(stages, StageFetched)
		if called < 0 || fetched < 0 || called > fetched {
			t.Fatalf("job %d: stages %v, want the call before the fetch", i, stages)
		}
	}
	answered := 0
	for _, c := range eb.chatCalls() {
		if !c.Canceled {
			answered++
		}
	}
	if answered != jobs {
		t.Fatalf("%d target calls answered for %d jobs", answered, jobs)
	}
}

// A wake-up left in the channel while a job ran is no reason for an early call: here its
// job was canceled while it waited (its client left), and the target never sees it.
func TestNoEarlyCallForAJobCanceledWhileAnotherRan(t *testing.T) {
	eb := newEarlyBundle(t)
	eb.fake.FailNext(1, ollamatest.Hang) // the first job runs until it is canceled
	var mu sync.Mutex
	woken := map[string]int{}
	eb.w.cfg.Trace = func(id, stage string) {
		if stage == StageWoken {
			mu.Lock()
			woken[id]++
			mu.Unlock()
		}
	}
	eb.w.cfg.IdlePoll = time.Hour
	iw := watchIdle(eb.w)
	runLoop(t, eb.w)
	iw.waitIdle(t, eb.w)
	first, err := eb.b.Store.Submit(eb.ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat, Sync: true}, []byte(chatBodyOf("tiny-a")))
	if err != nil {
		t.Fatal(err)
	}
	until(t, 10*time.Second, "the first job called", func() bool { return len(eb.chatCalls()) == 1 })
	gone := `{"model":"tiny-a","messages":[{"role":"user","content":"nobody waits for me"}],"stream":true}`
	second, err := eb.b.Store.Submit(eb.ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat, Sync: true}, []byte(gone))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eb.b.Store.Cancel(eb.ctx, second.ID, "client disconnected"); err != nil {
		t.Fatal(err)
	}
	// Both its wake-ups (from the submit, from NATS) reached the worker while it ran the
	// first job.
	until(t, 10*time.Second, "the canceled job's two wake-ups", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return woken[second.ID] == 2
	})
	if _, err := eb.b.Store.Cancel(eb.ctx, first.ID, "test"); err != nil {
		t.Fatal(err) // the worker aborts the hung call and goes idle
	}
	until(t, 10*time.Second, "the first job canceled", func() bool {
		rec, _, err := eb.b.Store.Get(eb.ctx, first.ID)
		return err == nil && rec.State == broker.StateCanceled
	})
	third, err := eb.b.Store.Submit(eb.ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat, Sync: true}, []byte(chatBodyOf("tiny-a")))
	if err != nil {
		t.Fatal(err)
	}
	eb.waitDone(t, third.ID)
	for _, c := range eb.chatCalls() {
		if string(c.Body) == gone {
			t.Fatalf("the target was called for the canceled job (canceled %v)", c.Canceled)
		}
	}
}

// An early call of a chat its caller asked not to stream is assembled as any call of it
// is (ADR-0050): the target streams, and the job's answer is the one Ollama gives the
// non-streamed call.
func TestEarlyCallOfANonStreamedChatIsAssembled(t *testing.T) {
	eb := newEarlyBundle(t)
	body := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":false}`
	j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	eb.b.PublishBare(t, j, body)
	u := wakeup{token: eb.token(t, "tiny-a"), jobID: j.ID, kind: broker.KindChat, body: []byte(body), fresh: true}
	ec := eb.w.callEarly(eb.ctx, u)
	if ec == nil {
		t.Fatal("no early call for a published job of the loaded model")
	}
	// The whole answer came before the run adopts the call.
	until(t, 10*time.Second, "the target's answer ended", func() bool {
		calls := eb.chatCalls()
		return len(calls) == 1 && calls[0].Finished
	})
	eb.runFrom(t, eb.ctx, j, u, ec)
	rec := eb.wantDoneAtFirstAttempt(t, j.ID)
	calls := eb.chatCalls()
	if len(calls) != 1 || !ollama.StreamsBody("/api/chat", calls[0].Body) {
		t.Fatalf("%d calls; want the one early call, streamed", len(calls))
	}
	var want []byte
	if _, err := eb.target.Client.Stream(eb.ctx, "/api/chat", []byte(body), func(f []byte) error {
		want = append(want, f...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rec.Result, want) {
		t.Errorf("result %s, want %s", rec.Result, want)
	}
}

// The lines of an assembled answer that come before a run adopts the early call are
// told to the run as it adopts it; those after, as they come.
func TestEarlyCallTellsItsRunOfLinesSeen(t *testing.T) {
	for _, before := range []bool{false, true} {
		ec := &earlyCall{adopted: make(chan struct{}), done: make(chan struct{})}
		close(ec.done)
		if before {
			ec.sawLine(time.Now())
		}
		var told []time.Time
		seen := func(at time.Time) { told = append(told, at) }
		if _, err := ec.adopt(func([]byte) error { return nil }, seen); err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{false: 0, true: 1}[before]; len(told) != want {
			t.Fatalf("a line before adoption %v: the run was told %d times at adoption, want %d", before, len(told), want)
		}
		at := time.Now()
		ec.sawLine(at)
		if len(told) == 0 || !told[len(told)-1].Equal(at) {
			t.Errorf("a line after adoption: told %v, want %v last", told, at)
		}
	}
}

// A job's message can reach its consumer later than the wait of the wake-up's fetch (a
// slow disk): the rechecks after it deliver the job, and the early call begun for it is
// kept for that delivery, not aborted and made again (on a Mac, a generation under way
// begun anew). So it is when a wake-up for a later job of the same queue comes
// meanwhile: it does not replace the held call, since the queue delivers the older job
// first.
func TestEarlyCallOutlivesALateMessage(t *testing.T) {
	laterBody := `{"model":"tiny-a","messages":[{"role":"user","content":"later"}],"stream":true}`
	for _, later := range []bool{false, true} {
		eb := newEarlyBundle(t)
		eb.w.cfg.IdlePoll = time.Hour
		j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
		var mu sync.Mutex
		var stages []string
		bothWoken := make(chan struct{}) // the job's two wake-ups came: the Store's own and NATS's copy
		wakes := 0
		eb.w.cfg.Trace = func(id, stage string) {
			if id != j.ID {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			stages = append(stages, stage)
			if stage == StageWoken {
				if wakes++; wakes == 2 {
					close(bothWoken)
				}
			}
		}
		var armed, submitted atomic.Bool
		var last atomic.Int64
		submit := make(chan error, 1)
		eb.w.cfg.onIdle = func(d time.Duration) {
			last.Store(int64(d))
			// The first short recheck after the wake-up's fetch came up empty: the job's
			// message is stored only now.
			if armed.Load() && d < time.Second && submitted.CompareAndSwap(false, true) {
				_, err := eb.b.Store.Submit(eb.ctx, j, []byte(chatBodyOf("tiny-a")))
				if err == nil && later {
					// Once both wake-ups of the job came, the newest is another job's.
					select {
					case <-bothWoken:
					case <-time.After(10 * time.Second):
						err = errors.New("the job's wake-ups did not come")
					}
					eb.w.poke(wakeup{token: eb.token(t, "tiny-a"), jobID: broker.NewID(), kind: broker.KindChat, body: []byte(laterBody), fresh: true})
				}
				submit <- err
			}
		}
		runLoop(t, eb.w)
		until(t, 10*time.Second, "the worker idle", func() bool {
			return eb.w.idling.Load() && time.Duration(last.Load()) >= time.Second
		})
		armed.Store(true)
		// The wake-up of a publish whose message is not yet stored.
		eb.w.poke(wakeup{token: eb.token(t, "tiny-a"), jobID: j.ID, kind: broker.KindChat, body: []byte(chatBodyOf("tiny-a")), fresh: true})
		select {
		case err := <-submit:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the loop never rechecked after the wake-up's fetch")
		}
		eb.waitDone(t, j.ID)
		mu.Lock()
		if called, fetched := slices.Index(stages, StageCalled), slices.Index(stages, StageFetched); called < 0 || called > fetched {
			t.Errorf("later job %v: stages %v: no call before the fetch", later, stages)
		}
		mu.Unlock()
		// The job's calls (a wake-up for a job never stored may make one of its own).
		calls := slices.DeleteFunc(eb.chatCalls(), func(c ollamatest.Call) bool { return string(c.Body) == laterBody })
		canceled := slices.ContainsFunc(calls, func(c ollamatest.Call) bool { return c.Canceled })
		if len(calls) != 1 || canceled {
			t.Errorf("later job %v: %d target calls (one canceled: %v), want the one early call, answered", later, len(calls), canceled)
		}
	}
}

// An early call that failed before its run adopted it (held while the fetches went on,
// its target gone meanwhile) is not adopted: the run calls afresh, and the attempt is
// not spent on the dead call.
func TestFailedEarlyCallIsNotAdopted(t *testing.T) {
	eb := newEarlyBundle(t)
	j, u := eb.publish(t)
	eb.fake.SetDown(true)
	ec := eb.w.callEarly(eb.ctx, u)
	if ec == nil {
		t.Fatal("no early call for a published job of the loaded model")
	}
	<-ec.done
	if !ec.failed() {
		t.Fatalf("the call to a down target ended with %v", ec.err)
	}
	eb.fake.SetDown(false)
	eb.runFrom(t, eb.ctx, j, u, ec)
	eb.wantDoneAtFirstAttempt(t, j.ID)
}

// An early call the target answered with an error status before its run adopted it (a
// fetch held back on a loaded machine) is adopted: the run ends on that answer as if it
// had called, and the target is not asked twice. Before, the run called afresh, and a
// one-off 500 was answered by the second call (a sync caller got a 200 where the
// target's answer was a 500).
func TestEarlyCallAnsweredWithAnErrorIsAdopted(t *testing.T) {
	eb := newEarlyBundle(t)
	j, u := eb.publish(t)
	eb.fake.FailNext(1, ollamatest.Fail500)
	ec := eb.w.callEarly(eb.ctx, u)
	if ec == nil {
		t.Fatal("no early call for a published job of the loaded model")
	}
	<-ec.done
	if ec.err == nil || ec.failed() {
		t.Fatalf("the call answered 500 ended with %v, failed %v; want an error the run adopts", ec.err, ec.failed())
	}
	eb.runFrom(t, eb.ctx, j, u, ec)
	if n := len(eb.chatCalls()); n != 1 {
		t.Errorf("%d target calls for the job's attempt, want the early one only", n)
	}
	rec, _, err := eb.b.Store.Get(eb.ctx, j.ID)
	if err != nil || rec.Attempt != 1 || rec.State == broker.StateDone || !strings.Contains(rec.Error, "fake: injected failure") {
		t.Fatalf("record: %+v, %v; want attempt 1 ended on the target's 500", rec, err)
	}
}
