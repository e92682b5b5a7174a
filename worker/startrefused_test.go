package worker_test

import (
	"fmt"
	"sync/atomic"
	"testing"

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
