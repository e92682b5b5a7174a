package worker_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A job fetched just as Stop comes is given back untouched: it does not run during the
// stop, and its record and queue message stay as they were.
func TestJobFetchedAsStopComesIsGivenBackUnrun(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	fetched, resume := make(chan struct{}), make(chan struct{})
	var once, idleOnce sync.Once
	idle := make(chan struct{})
	w := tb.start(t, worker.WithOnIdle(worker.Config{Trace: func(id, stage string) {
		if id == j.ID && stage == worker.StageFetched {
			once.Do(func() { close(fetched); <-resume })
		}
	}}, func(time.Duration) { idleOnce.Do(func() { close(idle) }) }))
	select {
	case <-idle:
	case <-waitCtx(t).Done():
		t.Fatal("the worker never went idle")
	}
	// Published to the idle worker, whose read of the record, begun as it saw the publish,
	// is there as the stop comes.
	if _, err := tb.b.Store.Submit(ctxT(t), j, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fetched:
	case <-waitCtx(t).Done():
		t.Fatal("the job was never fetched")
	}
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		stopped <- w.Stop(ctx)
	}()
	eventually(t, 10*time.Second, "the stop begun", w.Stopping)
	close(resume)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if n := callsOf(tb, "tiny-a"); n != 0 {
		t.Errorf("the target was called %d times during the stop, want none", n)
	}
	if rec := record(t, tb, j.ID); rec.State != broker.StateQueued || rec.Attempt != 0 {
		t.Errorf("record %s at attempt %d, want queued at attempt 0", rec.State, rec.Attempt)
	}
	if n, err := tb.b.Store.QueueLen(ctxT(t)); err != nil || n != 1 {
		t.Errorf("queue holds %d messages (%v), want the job given back", n, err)
	}
}

// A queue message whose record never comes is dropped at its first delivery, not put
// back to wait out the record's grace again on each delivery.
func TestOrphanMessageIsDeliveredOnce(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.RetryWindow = time.Second }))
	orphan := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	var fetched atomic.Int32
	tb.start(t, worker.Config{Trace: func(id, stage string) {
		if id == orphan.ID && stage == worker.StageFetched {
			fetched.Add(1)
		}
	}})
	tb.b.PublishBare(t, orphan, chatBody("tiny-a", 1))
	next := tb.chat(t, "tiny-a", 2)
	tb.waitState(t, next.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
	if n := fetched.Load(); n != 1 {
		t.Errorf("the orphan's message was delivered %d times, want once", n)
	}
}

// A job whose message was requeued (Store.Requeue: its first one reached the queue's
// MaxAge, or a stop cut off its last delivery) while its record still says it runs from
// the old one (the write that would have said otherwise did not land) runs from the new
// message: it is no spare copy, and dropping it would leave the job running forever.
func TestRequeuedMessageOfARunningRecordRunsTheJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	j := tb.chat(t, "tiny-a", 1)
	token, err := broker.ModelToken("tiny-a")
	if err != nil {
		t.Fatal(err)
	}
	d, err := tb.b.Store.NextWait(ctxT(t), token, 15*time.Second)
	if err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("take job %s: %v %v", j.ID, d, err)
	}
	modify(t, tb, j.ID, func(rec *broker.Job) { killedMidRun(rec, d) })
	if err := tb.b.Store.Requeue(ctxT(t), d); err != nil {
		t.Fatal(err)
	}
	tb.start(t, worker.Config{})
	got := tb.waitState(t, j.ID, broker.StateDone)
	if got.Attempt != 2 {
		t.Errorf("done at attempt %d, want 2", got.Attempt)
	}
	tb.waitQueueEmpty(t)
}

// A redelivered job whose cancel was requested is ended without its target call being
// issued, nor its attempt started.
func TestCancelRequestedRedeliveryIssuesNoCall(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.AckWait = time.Second }))
	j := tb.chat(t, "tiny-a", 1)
	token, err := broker.ModelToken("tiny-a")
	if err != nil {
		t.Fatal(err)
	}
	// A foreman takes the job and starts it, then dies: the delivery is never acked.
	d, err := tb.b.Store.NextWait(ctxT(t), token, 15*time.Second)
	if err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("take job %s: %v %v", j.ID, d, err)
	}
	modify(t, tb, j.ID, func(rec *broker.Job) { killedMidRun(rec, d) })
	if _, err := tb.b.Store.Cancel(ctxT(t), j.ID, "nobody waits"); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var stages []string
	tb.start(t, worker.Config{Trace: func(id, stage string) {
		if id == j.ID {
			mu.Lock()
			stages = append(stages, stage)
			mu.Unlock()
		}
	}})
	got := tb.waitState(t, j.ID, broker.StateCanceled)
	tb.waitQueueEmpty(t)
	if got.Error != "nobody waits" || got.Attempt != 1 {
		t.Errorf("canceled with %q at attempt %d, want the reason at attempt 1", got.Error, got.Attempt)
	}
	mu.Lock()
	defer mu.Unlock()
	if contains(stages, worker.StageCalled) || contains(stages, worker.StageStarted) {
		t.Errorf("stages %v: the canceled job's call was issued or its attempt started", stages)
	}
}

// A job delivered with its attempts used up (the worker runs with fewer than the queue
// was made with) fails without running, naming its last attempt's error.
func TestJobPastItsAttemptsFailsWithItsLastError(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	j := tb.chat(t, "tiny-a", 1)
	modify(t, tb, j.ID, func(rec *broker.Job) {
		rec.State, rec.Attempt, rec.Error = broker.StateRetrying, 2, "target unreachable: connection refused"
	})
	tb.start(t, worker.WithMaxAttempts(worker.Config{}, 2))
	got := tb.waitState(t, j.ID, broker.StateFailed)
	if want := "attempts exhausted: target unreachable: connection refused"; got.Error != want {
		t.Errorf("failed with %q, want %q", got.Error, want)
	}
	tb.waitQueueEmpty(t)
	if n := callsOf(tb, "tiny-a"); n != 0 {
		t.Errorf("the target was called %d times, want none", n)
	}
}

// A job whose record is canceled directly (Store.Cancel of a record that still says
// queued: its start write is on its way) has its target call aborted at once.
func TestCallOfAJobCanceledBeforeItsStartIsAborted(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	defer release()
	j := tb.chat(t, "tiny-a", 1)
	held := make(chan struct{})
	tb.start(t, worker.WithBeforeStart(worker.Config{}, func(id string) {
		if id == j.ID {
			<-held
		}
	}))
	t.Cleanup(func() { close(held) }) // before the worker's stop, which waits for the start
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	if rec, err := tb.b.Store.Cancel(ctxT(t), j.ID, "changed my mind"); err != nil || rec.State != broker.StateCanceled {
		t.Fatalf("cancel: %+v %v, want the record canceled", rec, err)
	}
	waitAborted(t, tb.fake, 1)
}

// A sync job whose answer ends in an error line (a runner that died mid-answer) fails
// with that error, as an async one does: its caller's final marker and its record say
// failed, not done.
func TestSyncJobWhoseStreamEndsInAnErrorFails(t *testing.T) {
	t.Parallel()
	tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(3)})
	tb.fake.FailNext(1, ollamatest.StreamError("llama runner process has terminated"))
	j := tb.syncJob(t, "tiny-a", tb.b.Store.BootID())
	stream := watchStream(t, tb.b.Conn, j.ID)
	tb.start(t, worker.Config{})
	_, final := stream.untilFinal(t)
	if final.Header.Get(broker.HeaderFinal) != "failed" || final.Header.Get(broker.HeaderError) != "llama runner process has terminated" {
		t.Fatalf("final %v, want failed with the stream's error", final.Header)
	}
	if rec := tb.waitState(t, j.ID, broker.StateFailed); rec.Error != "llama runner process has terminated" {
		t.Fatalf("record error %q", rec.Error)
	}
	tb.waitQueueEmpty(t)
}

// A cancel requested of a sync job whose record says it runs (as a delivery after a
// crash finds it), once its answer went out and while its start write is held, is moot:
// the late start write meets the request, and the job is stored done all the same, with
// its answer, not left running.
func TestCancelRequestedAfterASyncAnswerIsMoot(t *testing.T) {
	h := holdSyncStart(t, false)
	if final := h.finalMarker(t); final != string(broker.StateDone) {
		t.Fatalf("final marker %q, want done", final)
	}
	modify(t, h.tb, h.job.ID, func(rec *broker.Job) { rec.State, rec.Attempt = broker.StateWorking, 1 })
	if rec, err := h.tb.b.Store.Cancel(h.ctx, h.job.ID, "too late"); err != nil || rec.CancelRequested == "" {
		t.Fatalf("cancel: %+v %v, want a request on the running record", rec, err)
	}
	h.release()
	got := h.tb.waitState(t, h.job.ID, broker.StateDone)
	if got.Attempt != 1 || len(got.Result) == 0 {
		t.Errorf("done at attempt %d with result %q, want attempt 1 and the answer", got.Attempt, got.Result)
	}
	h.tb.waitQueueEmpty(t)
	if n := h.fetched.Load(); n != 1 {
		t.Errorf("the job's message was delivered %d times, want once", n)
	}
}

// A cancel of a sync job whose caller waits on another foreman, requested mid-answer,
// ends it canceled with the request's reason: it is no stop's hand-back.
func TestCancelMidAnswerOfAnotherForemansSyncJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	ctx := ctxT(t)
	other, err := broker.Open(ctx, broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	actx, stopAnnounce := context.WithCancel(ctx)
	announced := make(chan error, 1)
	go func() { announced <- other.Announce(actx) }()
	t.Cleanup(func() { stopAnnounce(); <-announced })

	tb.fake.FailNextOn("/api/chat", 1, ollamatest.StallMidStream) // frames, then nothing
	j := tb.syncJob(t, "tiny-a", other.BootID())
	stream := watchStream(t, tb.b.Conn, j.ID)
	tb.start(t, worker.Config{})
	tb.waitState(t, j.ID, broker.StateWorking) // its first frame went out
	if _, err := tb.b.Store.Cancel(ctx, j.ID, "caller hung up"); err != nil {
		t.Fatal(err)
	}
	_, final := stream.untilFinal(t)
	if final.Header.Get(broker.HeaderFinal) != "canceled" || final.Header.Get(broker.HeaderError) != "caller hung up" {
		t.Errorf("final marker %v, want canceled with the reason", final.Header)
	}
	if got := tb.waitState(t, j.ID, broker.StateCanceled); got.Error != "caller hung up" {
		t.Errorf("canceled with %q, want the request's reason", got.Error)
	}
	tb.waitQueueEmpty(t)
}

// A finished job that another writer ended while its done state was on its way (the
// expiry, a delivery limit) is acked as it stands: its message is not put back to be
// delivered again.
func TestFinishedJobEndedElsewhereIsAckedOnce(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	var fetched atomic.Int32
	ctx := ctxT(t)
	cfg := worker.WithBeforeStoreDone(worker.Config{Trace: func(id, stage string) {
		if id == j.ID && stage == worker.StageFetched {
			fetched.Add(1)
		}
	}}, func(id string) {
		if id != j.ID {
			return
		}
		if _, _, err := tb.b.Store.Modify(ctx, id, func(rec *broker.Job) error {
			rec.State, rec.Error = broker.StateFailed, "expired: elsewhere"
			return nil
		}); err != nil {
			t.Error(err)
		}
	})
	tb.start(t, cfg)
	if _, err := tb.b.Store.Submit(ctxT(t), j, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	got := tb.waitState(t, j.ID, broker.StateFailed)
	// Well within terminalWait (20 s): the done write gives up at once on an ended job.
	eventually(t, 10*time.Second, "the job's message acked", func() bool {
		n, err := tb.b.Store.QueueLen(ctxT(t))
		return err == nil && n == 0
	})
	if got.Error != "expired: elsewhere" {
		t.Errorf("record error %q, want the other writer's end kept", got.Error)
	}
	if n := fetched.Load(); n != 1 {
		t.Errorf("the job's message was delivered %d times, want once", n)
	}
}

// A sync job whose caller waits on this process, cut off mid-answer by a stop, is handed
// back with the attempt counted (its next delivery, in a process without its caller,
// cancels it unrun): it does not end failed as one whose caller waits on another foreman.
func TestStopMidAnswerHandsBackThisForemansSyncJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNextOn("/api/chat", 1, ollamatest.StallMidStream) // frames, then nothing
	w := tb.start(t, worker.Config{})
	j := tb.syncJob(t, "tiny-a", tb.b.Store.BootID())
	tb.waitState(t, j.ID, broker.StateWorking) // its first frame went out
	expired, cancel := context.WithCancel(ctxT(t))
	cancel()
	if err := w.Stop(expired); err != nil {
		t.Fatal(err)
	}
	got := record(t, tb, j.ID)
	if got.State != broker.StateRetrying || got.Attempt != 1 || got.Error != "foreman shutting down" {
		t.Errorf("record %s at attempt %d (%q), want retrying at attempt 1, the stop named", got.State, got.Attempt, got.Error)
	}
	if n, err := tb.b.Store.QueueLen(ctxT(t)); err != nil || n != 1 {
		t.Errorf("queue holds %d messages (%v), want the job handed back", n, err)
	}
}
