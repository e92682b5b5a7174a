package worker_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// enteredTarget is a target that tells when the worker's frame callback is first called:
// the target answered and the worker has the first frame in hand.
type enteredTarget struct {
	ollama.Client
	once    sync.Once
	entered chan struct{}
}

func (e *enteredTarget) Stream(ctx context.Context, path string, body []byte, fn func([]byte) error, opts ...ollama.StreamOption) (string, error) {
	return e.Client.Stream(ctx, path, body, func(f []byte) error {
		e.once.Do(func() { close(e.entered) })
		return fn(f)
	}, opts...)
}

// The start write and the target call go out together, but no frame is published before
// the start write is stored: a reader of the job's subjects (in another process) sees the
// attempt start before the first frame, and the job's record says so when that frame
// comes.
func TestStartWriteOverlapsCallNoFrameBeforeIt(t *testing.T) {
	tb := setup(t)
	target := &enteredTarget{Client: tb.target, entered: make(chan struct{})}
	holding, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	cfg := worker.WithBeforeStart(worker.Config{Target: target}, func(string) {
		once.Do(func() { close(holding) })
		<-release
	})
	j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	// A reader of another process: this one's feeds get the frames handed over ahead of
	// NATS, and a state event may then come after a frame (ADR-0035).
	reader, err := broker.Open(ctxT(t), broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	feed, err := reader.Feed(j.ID, broker.FeedConfig{Buffer: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	if _, err := tb.b.Store.Submit(ctxT(t), j, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	tb.start(t, cfg)
	t.Cleanup(func() { // before the worker stops, should the test end early
		select {
		case <-release:
		default:
			close(release)
		}
	})

	ctx := waitCtx(t)
	for _, c := range []struct {
		ch   chan struct{}
		what string
	}{{holding, "start write held"}, {target.entered, "target answered while the start write is held"}} {
		select {
		case <-c.ch:
		case <-ctx.Done():
			t.Fatalf("never: %s", c.what)
		}
	}
	if rec, _, err := tb.b.Store.Get(ctx, j.ID); err != nil || rec.State != broker.StateQueued || rec.Attempt != 0 {
		t.Fatalf("record while the start write is held: %+v, %v; want queued, attempt 0", rec, err)
	}
	close(release)

	started := false
	for {
		ev, ok := feed.Next()
		if !ok {
			select {
			case <-feed.Ready():
				continue
			case <-ctx.Done():
				t.Fatal("no frame")
			}
		}
		switch ev.Kind {
		case broker.EventState:
			if ev.Job.State == broker.StateWorking || ev.Job.State == broker.StateLoading {
				started = true
			}
		case broker.EventFrame:
			if !started {
				t.Fatal("a frame reached the job's reader before the start write was stored")
			}
			rec, _, err := tb.b.Store.Get(ctx, j.ID)
			if err != nil || rec.Attempt != 1 {
				t.Fatalf("record at the first frame: %+v, %v; want attempt 1", rec, err)
			}
			tb.waitState(t, j.ID, broker.StateDone)
			return
		case broker.EventFinal, broker.EventGap:
			t.Fatalf("stream ended before any frame: %+v", ev)
		}
	}
}

// A start write that fails (here: the job ended failed, as a delivery-limit advisory
// ends it, while its start write was under way) aborts the target call that went out with
// it, and the job ends as it did when the start write came first: its message acked, its
// record as the other writer left it, no frame published. (A cancel would abort the call
// through the job's watch as well; a failed state does not.)
func TestFailedStartWriteAbortsCall(t *testing.T) {
	tb := setupFake(t, nil)
	tb.fake.FailNext(1, ollamatest.Hang) // the call would never end on its own
	j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	watch := watchStream(t, tb.b.Conn, j.ID)
	cfg := worker.WithBeforeStart(worker.Config{}, func(id string) {
		if id != j.ID {
			return
		}
		ctx := waitCtx(t)
		if err := tb.fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
			t.Errorf("target not called while the start write waits: %v", err)
			return
		}
		_, _, err := tb.b.Store.Modify(ctx, id, func(j *broker.Job) error {
			j.State, j.Error = broker.StateFailed, "attempts exhausted: ended elsewhere"
			return nil
		})
		if err != nil {
			t.Errorf("end the job: %v", err)
		}
	})
	if _, err := tb.b.Store.Submit(ctxT(t), j, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	tb.start(t, cfg)

	ctx := waitCtx(t)
	err := tb.fake.WaitFor(ctx, func(calls []ollamatest.Call) bool {
		return len(calls) > 0 && calls[len(calls)-1].Path == "/api/chat" && calls[len(calls)-1].Canceled
	})
	if err != nil {
		t.Fatalf("the target call was not aborted: %v", err)
	}
	tb.waitQueueEmpty(t)
	rec := tb.waitState(t, j.ID, broker.StateFailed)
	if rec.Attempt != 0 {
		t.Errorf("attempt %d, want 0: the attempt never started", rec.Attempt)
	}
	// The worker moved on: the next job runs.
	next := tb.chat(t, "tiny-a", 2)
	tb.waitState(t, next.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
	select {
	case m := <-watch.ch:
		t.Fatalf("the canceled job published %q (headers %v)", m.Data, m.Header)
	default:
	}
}

// On a shared cluster (StartBeforeCall) the start write is stored before the target is
// called: the call finds the attempt counted, and a start write that fails (an election
// outlasting the store's retries) never reaches the target, so a job cannot reach it
// twice. The start write is held until the call arrives — which, with the start stored
// first, it never does: then only the hold's bound lets the start go on (the assertion
// does not depend on it; it only keeps the passing case from waiting for the deadline).
func TestStartBeforeCallStoresStartFirst(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{})
	var once sync.Once
	var tb *testBundle
	id := broker.NewID()
	var atCall atomic.Int64
	atCall.Store(-1)
	tb = setupFake(t, []ollamatest.Option{ollamatest.WithBeforeChat(func(ctx context.Context, _ string) error {
		once.Do(func() {
			defer close(arrived)
			rec, _, err := tb.b.Store.Get(ctx, id)
			if err != nil {
				t.Errorf("read the record at the call: %v", err)
				return
			}
			atCall.Store(int64(rec.Attempt))
		})
		return nil
	})})
	cfg := worker.WithBeforeStart(worker.Config{StartBeforeCall: true}, func(id string) {
		select {
		case <-arrived:
		case <-time.After(300 * time.Millisecond):
		}
	})
	j := &broker.Job{ID: id, Model: "tiny-a", Kind: broker.KindChat}
	if _, err := tb.b.Store.Submit(ctxT(t), j, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	tb.start(t, cfg)
	tb.waitState(t, j.ID, broker.StateDone)
	if got := atCall.Load(); got != 1 {
		t.Fatalf("the target was called with the record at attempt %d, want 1: the start is stored before the call", got)
	}
}

// A crash after the target was called and before the start write was stored leaves the
// job queued, attempt 0, its message un-acked: it comes back after the restart and runs
// to its end once, its record counting the one attempt that was stored (JetStream's
// delivery count is the safety net for attempts that never were).
func TestCrashBeforeStartStoredRunsAgain(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.AckWait = time.Second }))
	release := tb.fake.Hold("tiny-a")
	j := tb.chat(t, "tiny-a", 1)

	holding, crashed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	cfg := worker.WithBeforeStart(worker.Config{Store: tb.b.Store, Target: tb.target, Logger: testLogger()}, func(string) {
		once.Do(func() { close(holding) })
		<-crashed
	})
	w1, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	done1 := make(chan error, 1)
	go func() { done1 <- w1.Run(ctx1) }()
	ctx := waitCtx(t)
	select {
	case <-holding:
	case <-ctx.Done():
		t.Fatal("no start write")
	}
	if err := tb.fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatalf("target not called while the start write waits: %v", err)
	}
	if rec, _, err := tb.b.Store.Get(ctx, j.ID); err != nil || rec.State != broker.StateQueued || rec.Attempt != 0 {
		t.Fatalf("record before the crash: %+v, %v; want queued, attempt 0", rec, err)
	}
	tb.b.Restart(t) // the crash: the server and the connection go away
	close(crashed)
	cancel1()
	<-done1
	release()

	tb.start(t, worker.Config{})
	got := tb.waitState(t, j.ID, broker.StateDone)
	if got.Attempt != 1 {
		t.Errorf("attempt %d, want 1: the crashed attempt never started", got.Attempt)
	}
	tb.waitQueueEmpty(t)
	if finished := finishedCalls(tb.fake); finished != 1 {
		t.Errorf("fake finished the job %d times, want 1 (calls %+v)", finished, tb.fake.Calls())
	}
}

// heldSyncStart runs a sync chat job whose model is loaded (a first job loaded it: a
// loading job's first frame waits for its start) with its start write held, and returns
// once the job's first frame was published while the start write is held. release lets
// the start write go on. With holdRest the fake holds the rest of the answer after its
// first token until releaseRest (or the call is aborted).
type heldSyncStart struct {
	tb          *testBundle
	job         *broker.Job
	watch       *streamWatch
	ctx         context.Context
	release     func()
	releaseRest func()
	failStart   atomic.Bool  // the held start write then fails, as a store failure would
	loseStart   atomic.Bool  // the held start write is stored, then reports a failure
	fetched     atomic.Int32 // leases of the job's message the worker took
}

func holdSyncStart(t *testing.T, holdRest bool, opts ...brokertest.Option) *heldSyncStart {
	t.Helper()
	var armed atomic.Bool
	rest := make(chan struct{})
	var restOnce sync.Once
	tb := setupFake(t, []ollamatest.Option{ollamatest.WithBeforeToken(func(ctx context.Context, i int) error {
		if i == 0 || !armed.Load() {
			return nil
		}
		select {
		case <-rest:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})}, opts...)
	holding, release := make(chan struct{}), make(chan struct{})
	var holdOnce, releaseOnce sync.Once
	h := &heldSyncStart{tb: tb, ctx: waitCtx(t),
		release:     func() { releaseOnce.Do(func() { close(release) }) },
		releaseRest: func() { restOnce.Do(func() { close(rest) }) },
	}
	h.job = &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true}
	cfg := worker.WithBeforeStart(worker.Config{Trace: func(id, stage string) {
		if id == h.job.ID && stage == worker.StageFetched {
			h.fetched.Add(1)
		}
	}}, func(id string) {
		if id != h.job.ID {
			return
		}
		holdOnce.Do(func() { close(holding) })
		<-release
	})
	cfg = worker.WithStartFault(cfg, func(id string) error {
		if id == h.job.ID && h.failStart.CompareAndSwap(true, false) {
			return errors.New("injected store failure")
		}
		return nil
	})
	cfg = worker.WithStartAnswerLost(cfg, func(id string) bool {
		return id == h.job.ID && h.loseStart.CompareAndSwap(true, false)
	})
	tb.start(t, cfg)
	t.Cleanup(h.release) // before the worker stops, should the test end early
	t.Cleanup(h.releaseRest)
	first := tb.chat(t, "tiny-a", 0) // loads the model
	tb.waitState(t, first.ID, broker.StateDone)
	armed.Store(holdRest)
	h.watch = watchStream(t, tb.b.Conn, h.job.ID)
	if _, err := tb.b.Store.Submit(ctxT(t), h.job, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-holding:
	case <-h.ctx.Done():
		t.Fatal("the start write never began")
	}
	select {
	case m := <-h.watch.ch:
		if m.Header.Get(broker.HeaderFinal) != "" {
			t.Fatalf("final marker before any frame: %v", m.Header)
		}
	case <-h.ctx.Done():
		t.Fatal("no frame while the start write was held")
	}
	return h
}

// finalMarker reads the job's stream up to its final marker and returns its state.
func (h *heldSyncStart) finalMarker(t *testing.T) string {
	t.Helper()
	for {
		select {
		case m := <-h.watch.ch:
			if final := m.Header.Get(broker.HeaderFinal); final != "" {
				return final
			}
		case <-h.ctx.Done():
			t.Fatal("no final marker")
		}
	}
}

// A sync job's caller gets its frames once the job is on disk (record and queue message),
// while the attempt's start is still being stored (ADR-0036): here the start write is
// held, and the frames come all the same; the job then ends done at attempt 1.
func TestSyncJobFramesDoNotWaitForTheStartWrite(t *testing.T) {
	h := holdSyncStart(t, true)
	if rec, _, err := h.tb.b.Store.Get(h.ctx, h.job.ID); err != nil || rec.Attempt != 0 {
		t.Fatalf("record at the first frame: %+v, %v; want the start not yet stored", rec, err)
	}
	h.release()
	h.releaseRest()
	if rec := h.tb.waitState(t, h.job.ID, broker.StateDone); rec.Attempt != 1 {
		t.Fatalf("done at attempt %d, want 1", rec.Attempt)
	}
}

// A sync job's whole answer, its final marker included, goes out while its start is
// still being stored (ADR-0038); the start, the result and the terminal state follow,
// and the job ends done at attempt 1, called once.
func TestSyncJobAnswerDoesNotWaitForTheStartWrite(t *testing.T) {
	h := holdSyncStart(t, false)
	if final := h.finalMarker(t); final != string(broker.StateDone) {
		t.Fatalf("final marker %q, want done", final)
	}
	if rec, _, err := h.tb.b.Store.Get(h.ctx, h.job.ID); err != nil || rec.State != broker.StateQueued || rec.Attempt != 0 {
		t.Fatalf("record at the final marker: %+v, %v; want queued at attempt 0 (the start held)", rec, err)
	}
	h.release()
	rec := h.tb.waitState(t, h.job.ID, broker.StateDone)
	if rec.Attempt != 1 || len(rec.Result) == 0 {
		t.Fatalf("done at attempt %d with result %q, want attempt 1 and the answer", rec.Attempt, rec.Result)
	}
	// The start stored again names its runner as the first one would have (ADR-0064).
	if _, boot := rec.CurrentRunner(); boot != h.tb.b.Store.BootID() {
		t.Errorf("runner boot %q of attempt %d (record %q, attempt %d), want this foreman's %q",
			boot, rec.Attempt, rec.RunnerBoot, rec.RunnerAttempt, h.tb.b.Store.BootID())
	}
	h.tb.waitQueueEmpty(t)
	if finished := finishedCalls(h.tb.fake); finished != 2 { // the loading job and this one
		t.Errorf("fake finished %d calls, want 2", finished)
	}
}

// A sync job ended by another writer while still queued (here failed, as the delivery
// limit's advisory ends one; a cancel does the same and also deletes the message), its
// start write on the way, after its answer went out: the start finds it ended, and its
// message is acked at once, not handed back to be delivered again (ADR-0038).
func TestSyncJobEndedElsewhereAfterItsAnswerIsAckedOnce(t *testing.T) {
	h := holdSyncStart(t, false)
	if final := h.finalMarker(t); final != string(broker.StateDone) {
		t.Fatalf("final marker %q, want done", final)
	}
	if _, _, err := h.tb.b.Store.Modify(h.ctx, h.job.ID, func(j *broker.Job) error {
		j.State, j.Error = broker.StateFailed, "ended elsewhere"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	h.release()
	h.tb.waitQueueEmpty(t)
	if rec, _, err := h.tb.b.Store.Get(h.ctx, h.job.ID); err != nil || rec.State != broker.StateFailed {
		t.Fatalf("record: %+v, %v; want failed as the other writer left it", rec, err)
	}
	if n := h.fetched.Load(); n != 1 {
		t.Errorf("the job's message was delivered %d times, want 1", n)
	}
	if finished := finishedCalls(h.tb.fake); finished != 2 {
		t.Errorf("fake finished %d calls, want 2 (the loading job and this one, once)", finished)
	}
}

// A sync job whose start write fails (a store failure) after its answer went out cannot
// go from queued to done: its start is stored again, then its result, and it ends done at
// attempt 1, delivered and called once, its stream ended once (ADR-0038).
func TestSyncJobWhoseStartFailsAfterItsAnswerEndsDone(t *testing.T) {
	h := holdSyncStart(t, false)
	h.failStart.Store(true)
	if final := h.finalMarker(t); final != string(broker.StateDone) {
		t.Fatalf("final marker %q, want done", final)
	}
	h.release()
	rec := h.tb.waitState(t, h.job.ID, broker.StateDone)
	if rec.Attempt != 1 || len(rec.Result) == 0 {
		t.Fatalf("done at attempt %d with result %q, want attempt 1 and the answer", rec.Attempt, rec.Result)
	}
	h.tb.waitQueueEmpty(t)
	if n := h.fetched.Load(); n != 1 {
		t.Errorf("the job's message was delivered %d times, want 1", n)
	}
	if finished := finishedCalls(h.tb.fake); finished != 2 {
		t.Errorf("fake finished %d calls, want 2 (the loading job and this one, once)", finished)
	}
	select {
	case m := <-h.watch.ch:
		t.Errorf("a message after the final marker: %v %q", m.Header, m.Data)
	default:
	}
}

// A start write stored but answered with a failure (its answer lost) after the job's
// answer went out: the start is not counted twice; the job ends done at attempt 1.
func TestSyncJobWhoseStartAnswerIsLostCountsOneAttempt(t *testing.T) {
	h := holdSyncStart(t, false)
	h.loseStart.Store(true)
	if final := h.finalMarker(t); final != string(broker.StateDone) {
		t.Fatalf("final marker %q, want done", final)
	}
	h.release()
	if rec := h.tb.waitState(t, h.job.ID, broker.StateDone); rec.Attempt != 1 {
		t.Fatalf("done at attempt %d, want 1", rec.Attempt)
	}
	h.tb.waitQueueEmpty(t)
	if n := h.fetched.Load(); n != 1 {
		t.Errorf("the job's message was delivered %d times, want 1", n)
	}
}

// A sync job whose start write fails after its caller got frames (here its record is
// gone by then) is not handed back for another attempt, which would stream from frame 1
// again into the same answer: it fails, and its caller gets the final failed marker.
//
// The failed state finds no record either: on a store of its own (the embedded server)
// the worker stops trying after goneWait, not terminalWait, and hands the message back,
// to be dropped for want of a record.
func TestSyncJobWhoseStartFailsAfterFramesFails(t *testing.T) {
	h := holdSyncStart(t, true, exclusive) // the call still runs when the start fails
	if err := h.tb.b.JobRecords(t).Purge(h.ctx, "job."+h.job.ID); err != nil {
		t.Fatal(err)
	}
	h.release()
	if final := h.finalMarker(t); final != string(broker.StateFailed) {
		t.Fatalf("final marker %q, want failed", final)
	}
	// Trying for terminalWait, the worker would hand it back after 20 s.
	eventually(t, 10*time.Second, "the message handed back once the write found no record for goneWait", func() bool {
		return h.fetched.Load() >= 2
	})
}

// exclusive makes a test store one no other foreman shares, as the embedded server's is.
var exclusive = brokertest.WithStore(func(c *broker.Config) { c.Exclusive = true })
