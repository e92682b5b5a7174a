package worker_test

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A job kept for a full queue (ADR-0100) whose model left this Mac on a shared NATS, and
// one due of it whose requeue failed for a store blip rather than the full queue: the
// kept delivery was run here all the same, against a target that no longer has the
// model (one more 404, the record written loading and back to retrying, a state event
// each). It waits kept instead, as at a due the full queue refused, and its requeue is
// tried again at the next due.
func TestAKeptJobNotRunHereWaitsThroughAStoreBlip(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts, c.MaxQueue = 1, 2 }))
	inv := tb.polledInventory(t)

	other := tb.chat(t, "tiny-z", 0)
	j := tb.chat(t, "tiny-b", 1)
	tb.fake.FailNext(2, ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded"))
	tb.fake.FailNext(1, ollamatest.FailStatus(http.StatusNotFound, `model "tiny-b" not found, try pulling it first`))
	var starts, requeues atomic.Int32
	cfg := worker.Config{Inventory: inv, RetryDelay: time.Millisecond, IdlePoll: 20 * time.Millisecond,
		Runs: func(_ context.Context, model string) bool { return inv.HasModel(model) }}
	cfg = worker.WithBeforeStart(cfg, func(id string) {
		if id == j.ID && starts.Add(1) == 3 {
			deleteModel(t, tb.fake, "tiny-b")
		}
	})
	tb.start(t, worker.WithRequeueFault(cfg, func(id string) error {
		if id == j.ID && requeues.Add(1) == 2 {
			// The first due of the kept delivery: the store does not answer.
			return fmt.Errorf("requeue: %w", broker.ErrUnavailable)
		}
		return nil
	}))

	eventually(t, 10*time.Second, "the kept job's requeue tried at later dues", func() bool { return requeues.Load() >= 4 })
	if got := modelCalls(tb.fake, "tiny-b"); got != 3 {
		t.Errorf("%d chat calls of tiny-b, want 3 (two busy, the 404): a kept job not run here is not run at a store blip", got)
	}
	rec, _, err := tb.b.Store.Get(ctxT(t), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("record after the blip: state %s attempt %d runner_attempt %d error %q", rec.State, rec.Attempt, rec.RunnerAttempt, rec.Error)
	if _, err := tb.b.Store.Cancel(ctxT(t), other.ID, ""); err != nil { // room again
		t.Fatal(err)
	}
	tb.fake.AddModel(ollamatest.Model{Name: "tiny-b"})
	if err := inv.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if got := tb.waitEnded(t, j.ID); got.State != broker.StateDone || got.Attempt != 1 {
		t.Errorf("job ended %s (%s) at attempt %d, want done at 1", got.State, got.Error, got.Attempt)
	}
}

// The same for a job this Mac left to another (ADR-0066): its runner stalled on the job's
// last delivery, the requeue found the queue full, and at the kept delivery's first due a
// store blip failed the requeue. The kept delivery ran here again, on the Mac it was
// given up on: another stall, an attempt spent, and with its attempts used up the job
// failed, though another Mac offered its model.
func TestAKeptJobLeftToAnotherMacIsNotRunHereAtAStoreBlip(t *testing.T) {
	t.Parallel()
	// Two attempts: JetStream's fourth delivery is the last.
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts, c.MaxQueue = 2, 2 }))
	inv := tb.polledInventory(t)
	other := tb.chat(t, "tiny-z", 0) // fills the queue: no Mac here runs tiny-z
	j := tb.chat(t, "tiny-b", 1)
	// Three "not now" answers (not counted) spend j's first three deliveries; its runner
	// stalls on the last, and would again.
	tb.fake.FailNext(3, ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded"))
	tb.fake.FailNextOn("/api/chat", 2, ollamatest.StallMidStream)
	var requeues atomic.Int32
	cfg := worker.Config{Inventory: inv, RetryDelay: time.Millisecond, IdlePoll: 20 * time.Millisecond,
		StreamIdleTimeout: testIdle, MaxWait: time.Hour, Elsewhere: offeredElsewhere,
		Runs: func(_ context.Context, model string) bool { return inv.HasModel(model) }}
	tb.start(t, worker.WithRequeueFault(cfg, func(id string) error {
		if id == j.ID && requeues.Add(1) == 2 {
			return fmt.Errorf("requeue: %w", broker.ErrUnavailable)
		}
		return nil
	}))

	var rec *broker.Job
	eventually(t, 10*time.Second, "the kept job's requeue tried at later dues, or the job ended", func() bool {
		var err error
		if rec, _, err = tb.b.Store.Get(ctxT(t), j.ID); err != nil {
			t.Fatal(err)
		}
		return requeues.Load() >= 4 || rec.State.Terminal()
	})
	if rec.State != broker.StateRetrying || rec.Attempt != 1 {
		t.Errorf("job %s (%s) at attempt %d, want retrying at 1: left to another Mac, it does not run here", rec.State, rec.Error, rec.Attempt)
	}
	if got := modelCalls(tb.fake, "tiny-b"); got != 4 {
		t.Errorf("%d chat calls of tiny-b, want 4 (three busy, the stall)", got)
	}
	if t.Failed() {
		return
	}
	if _, err := tb.b.Store.Cancel(ctxT(t), other.ID, ""); err != nil { // room again
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the kept job requeued once the queue had room", func() bool {
		st, err := tb.b.Store.QueueState(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		return st.Msgs == 1 && requeues.Load() >= 5
	})
}
