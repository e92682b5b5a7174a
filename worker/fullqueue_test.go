package worker_test

import (
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

// fullQueue is a store whose queue holds one job (FOREMAN_MAX_QUEUE=1), so a job's own
// requeue, whose old message still counts, always finds it full; one attempt, so
// JetStream's third delivery is its last (MaxDeliver 3).
func fullQueue(c *broker.Config) { c.MaxAttempts, c.MaxQueue = 1, 1 }

// A busy target that outlasts a job's deliveries in a full queue: the requeue at the last
// delivery was refused "queue full" (the old message still counts against the bound), the
// delivery NAKed, and the delivery limit's advisory failed the job "attempts exhausted:
// delivered 3 times" with no attempt spent. The delivery is kept and the job runs (ADR-0100).
func TestABusyJobOutlastsItsDeliveriesInAFullQueue(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(fullQueue))
	tb.fake.FailNext(4, ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded"))
	j := tb.chat(t, "tiny-a", 1)
	tb.start(t, worker.Config{RetryDelay: time.Millisecond})
	got := tb.waitEnded(t, j.ID)
	if got.State != broker.StateDone || got.Attempt != 1 {
		t.Errorf("job ended %s (%s) at attempt %d, want done at 1", got.State, got.Error, got.Attempt)
	}
	if n := len(inferenceCalls(tb.fake)); n != 5 {
		t.Errorf("target called %d times, want 5", n)
	}
}

// A job whose start the store refused on each of its deliveries, the last included, in a
// full queue: its requeue was refused "queue full", the last delivery NAKed, and the
// advisory failed the job at attempt 0, never run. It runs from the delivery it holds.
func TestAStartRefusedOnTheLastDeliveryOfAFullQueueRuns(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(fullQueue))
	maxDeliver := tb.b.Store.Config().MaxDeliver()
	var refused atomic.Int32
	tb.start(t, worker.WithStartFault(worker.Config{RetryDelay: time.Millisecond}, func(string) error {
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
}
