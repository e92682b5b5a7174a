package worker_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A store that refuses a job's start on each of its deliveries, taking the worker's probe
// in between (room that comes and goes), must not spend the job: on JetStream's last
// delivery a NAK left the message for the delivery limit's advisory, which failed the job
// "attempts exhausted: delivered 3 times" at attempt 0, never run. It is requeued once the
// store takes writes, and runs: done at attempt 1.
func TestAStartRefusedOnTheLastDeliveryIsRequeued(t *testing.T) {
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 1 })) // MaxDeliver 3
	maxDeliver := tb.b.Store.Config().MaxDeliver()
	var refused atomic.Int32
	tb.start(t, worker.WithStartFault(worker.Config{}, func(string) error {
		if int(refused.Add(1)) <= maxDeliver {
			return fmt.Errorf("injected: %w", broker.ErrStorageFull)
		}
		return nil
	}))
	j := tb.chat(t, "tiny-a", 0)
	rec := tb.waitEnded(t, j.ID)
	if rec.State != broker.StateDone || rec.Attempt != 1 {
		t.Fatalf("job ended %s at attempt %d (%q), want done at attempt 1", rec.State, rec.Attempt, rec.Error)
	}
	if n := int(refused.Load()); n != maxDeliver+1 {
		t.Errorf("%d start writes, want %d (every delivery refused, then one stored)", n, maxDeliver+1)
	}
}

// A job whose start the store refused on its last delivery, and whose requeue the store
// then refuses too (the queue's stream still without a leader while the records' took
// the worker's probe), is requeued once the store takes it: a NAK of that delivery left
// the message for the delivery limit's advisory, which failed the job "attempts
// exhausted: delivered 3 times" at attempt 0, never run.
func TestARequeueRefusedOnTheLastDeliveryIsTriedAgain(t *testing.T) {
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 1 })) // MaxDeliver 3
	maxDeliver := tb.b.Store.Config().MaxDeliver()
	var refused, requeues atomic.Int32
	cfg := worker.WithStartFault(worker.Config{}, func(string) error {
		if int(refused.Add(1)) <= maxDeliver {
			return fmt.Errorf("injected: %w", broker.ErrStorageFull)
		}
		return nil
	})
	cfg = worker.WithRequeueFault(cfg, func(string) error {
		if requeues.Add(1) <= 2 {
			return fmt.Errorf("injected: %w", broker.ErrUnavailable)
		}
		return nil
	})
	tb.start(t, cfg)
	j := tb.chat(t, "tiny-a", 0)
	rec := tb.waitEnded(t, j.ID)
	if rec.State != broker.StateDone || rec.Attempt != 1 {
		t.Fatalf("job ended %s at attempt %d (%q), want done at attempt 1", rec.State, rec.Attempt, rec.Error)
	}
	if n := requeues.Load(); n != 3 {
		t.Errorf("%d requeues tried, want 3 (two refused, then one stored)", n)
	}
}

// A job whose attempt failed on its last delivery with attempts left is requeued; a
// requeue the store refuses for now (the queue's stream electing a leader) fell back to
// a NAK of that last delivery, and the delivery limit's advisory failed the job
// "attempts exhausted: delivered 3 times" with its attempts unspent. It is tried again
// once the store takes writes, the delivery held, and the job runs.
func TestARetryRequeueRefusedOnTheLastDeliveryIsTriedAgain(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 1 })) // MaxDeliver 3
	maxDeliver := tb.b.Store.Config().MaxDeliver()
	var down atomic.Bool
	down.Store(true)
	target := &refusingStreams{Client: tb.target, refused: switchedTarget(t, tb, &down)}
	target.n.Store(int32(maxDeliver)) // every delivery of the first message refused at the dial
	var requeues atomic.Int32
	cfg := worker.WithRequeueFault(worker.Config{Target: target, RetryDelay: time.Millisecond}, func(string) error {
		if requeues.Add(1) == 1 {
			return fmt.Errorf("injected: %w", broker.ErrUnavailable)
		}
		return nil
	})
	j := tb.chat(t, "tiny-a", 1)
	tb.start(t, cfg)
	got := tb.waitEnded(t, j.ID)
	if got.State != broker.StateDone || got.Attempt != 1 {
		t.Fatalf("job ended %s (%q) at attempt %d, want done at attempt 1", got.State, got.Error, got.Attempt)
	}
	if n := requeues.Load(); n != 2 {
		t.Errorf("%d requeues tried, want 2 (one refused, then one stored)", n)
	}
}
