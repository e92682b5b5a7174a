package worker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// The race found in review: the stream said done, and a cancel lands before the done
// record is written. The worker alone ends a running job, so the record ends done too.
func TestCancelAfterFinalDoneIsMoot(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	j := tb.chat(t, "tiny-a", 1)
	stream := watchStream(t, tb.b.Conn, j.ID)
	states := watchStates(t, tb.b.Conn, j.ID)
	reached, hold := make(chan struct{}), make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(hold) }) }
	tb.start(t, worker.WithBeforeStoreDone(worker.Config{}, func(id string) {
		if id == j.ID {
			close(reached)
			<-hold
		}
	}))
	t.Cleanup(release) // before the worker's own cleanup, which waits for this write

	_, final := stream.untilFinal(t)
	if got := final.Header.Get(broker.HeaderFinal); got != "done" {
		t.Fatalf("final marker %q, want done", got)
	}
	select {
	case <-reached:
	case <-waitCtx(t).Done():
		t.Fatal("the done record was written without the hook")
	}
	req, err := tb.b.Store.Cancel(ctxT(t), j.ID, "too late")
	if err != nil {
		t.Fatalf("cancel in the window: %v", err)
	}
	if req.State.Terminal() || req.CancelRequested != "too late" {
		t.Fatalf("Cancel wrote %s (request %q), want a pending request", req.State, req.CancelRequested)
	}
	release()

	got := tb.waitState(t, j.ID, broker.StateDone)
	if _, ok := got.Artifact("result.json"); !ok || len(got.Result) == 0 {
		t.Errorf("done record without its result: %+v", got)
	}
	seen := states.until(t)
	if last := seen[len(seen)-1]; last != broker.StateDone || contains(seen, broker.StateCanceled) {
		t.Errorf("state events %v, want them to end done and never canceled", seen)
	}
	tb.waitQueueEmpty(t)
}

// A job whose cancel was requested while its foreman was gone is ended canceled when it
// is redelivered, without reaching the target.
func TestCancelRequestedJobRedeliveredEndsCanceled(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.AckWait = time.Second }))
	ctx := ctxT(t)
	j := tb.chat(t, "tiny-a", 1)

	// A foreman takes the job and starts it, then dies: the delivery is never acked.
	token, _ := broker.ModelToken("tiny-a")
	if d, err := tb.b.Store.Next(ctx, token); err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("take the job: %v %v", d, err)
	}
	if _, _, err := tb.b.Store.Modify(ctx, j.ID, func(j *broker.Job) error {
		j.State, j.Attempt = broker.StateLoading, 1
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	req, err := tb.b.Store.Cancel(ctx, j.ID, "nobody waits")
	if err != nil || req.State != broker.StateLoading || req.CancelRequested == "" {
		t.Fatalf("cancel request: %+v %v", req, err)
	}
	tb.b.Restart(t)

	stream := watchStream(t, tb.b.Conn, j.ID)
	tb.start(t, worker.Config{})
	_, final := stream.untilFinal(t)
	if got := final.Header.Get(broker.HeaderFinal); got != "canceled" {
		t.Errorf("final marker %q, want canceled", got)
	}
	got := tb.waitState(t, j.ID, broker.StateCanceled)
	if got.Error != "nobody waits" || got.Attempt != 1 {
		t.Errorf("canceled record: error %q attempt %d, want the reason and no new attempt", got.Error, got.Attempt)
	}
	tb.waitQueueEmpty(t)
	// The worker is free and the canceled job never ran: a later job is the only call.
	next := tb.chat(t, "tiny-a", 2)
	tb.waitState(t, next.ID, broker.StateDone)
	if calls := inferenceCalls(tb.fake); len(calls) != 1 {
		t.Errorf("%d inference calls, want 1 (the canceled job must not reach the target)", len(calls))
	}
}

// A cancel racing a hard stop ends the job canceled whichever comes first: a hand-back
// of a job with a pending request ends it canceled instead, and a request that comes
// after the hand-back cancels the queued job at once. It never runs again.
func TestCancelRacingStopEndsCanceled(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	defer release()
	j := tb.chat(t, "tiny-a", 1)
	w := tb.start(t, worker.Config{})
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	tb.waitState(t, j.ID, broker.StateLoading)
	canceled := make(chan error, 1)
	go func() {
		_, err := tb.b.Store.Cancel(ctxT(t), j.ID, "user")
		canceled <- err
	}()
	expired, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Stop(expired); err != nil {
		t.Fatal(err)
	}
	if err := <-canceled; err != nil {
		t.Fatalf("cancel: %v", err)
	}
	got := tb.waitState(t, j.ID, broker.StateCanceled)
	if got.Error != "user" {
		t.Errorf("canceled record error %q, want the reason", got.Error)
	}
	release()
	tb.start(t, worker.Config{})
	next := tb.chat(t, "tiny-a", 2)
	tb.waitState(t, next.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
	if calls := inferenceCalls(tb.fake); len(calls) != 2 {
		t.Errorf("%d inference calls, want 2 (the canceled job must not run again)", len(calls))
	}
}
