package worker_test

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// keptElsewhere starts a worker whose job j of tiny-b ends up kept for a full queue
// (ADR-0100) and not run here: the queue holds two jobs, the other one (of tiny-z, a
// model no Mac here runs) fills it, and tiny-b leaves this Mac at j's last delivery.
// dues counts the dues of j's kept delivery, kept again or not.
type keptElsewhere struct {
	tb         *testBundle
	j, other   *broker.Job
	kept, left atomic.Int32 // dues after which j's delivery was kept again, and not
	// cancel, when set, cancels j at the end of a due that kept it again: before the next
	// due, not during one. The cancel's error goes to canceled.
	cancel   atomic.Bool
	canceled chan error
}

func startKeptElsewhere(t *testing.T) *keptElsewhere {
	t.Helper()
	k := &keptElsewhere{canceled: make(chan error, 1), tb: setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts, c.MaxQueue = 1, 2 }))}
	tb := k.tb
	inv := tb.polledInventory(t)
	k.other = tb.chat(t, "tiny-z", 0)
	k.j = tb.chat(t, "tiny-b", 1)
	// Two "not now" answers (not counted) spend j's first two deliveries; the 404 on its
	// last finds the model gone, and the requeue finds the queue full.
	tb.fake.FailNext(2, ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded"))
	tb.fake.FailNext(1, ollamatest.FailStatus(http.StatusNotFound, `model "tiny-b" not found, try pulling it first`))
	var starts atomic.Int32
	cfg := worker.Config{Inventory: inv, RetryDelay: time.Millisecond, IdlePoll: 20 * time.Millisecond,
		Runs: func(_ context.Context, model string) bool { return inv.HasModel(model) }}
	cfg = worker.WithBeforeStart(cfg, func(id string) {
		if id == k.j.ID && starts.Add(1) == 3 {
			deleteModel(t, tb.fake, "tiny-b")
		}
	})
	cfg = worker.WithAfterParked(cfg, func(id string, kept bool) {
		if id != k.j.ID {
			return
		}
		if kept {
			if k.cancel.CompareAndSwap(true, false) {
				_, err := tb.b.Store.Cancel(ctxT(t), k.j.ID, "not wanted")
				k.canceled <- err
			}
			k.kept.Add(1)
		} else {
			k.left.Add(1)
		}
	})
	tb.start(t, cfg)
	eventually(t, 10*time.Second, "the job's delivery kept for the full queue", func() bool { return k.kept.Load() >= 1 })
	return k
}

// A job canceled while its last delivery was kept for a full queue: once room came (the
// cancel itself removes its message), the kept delivery's requeue published the job
// again, logged "job requeued", and its copy held a place in the queue, refusing a
// submit "queue full", until a foreman that runs its model met it (or for a job TTL).
// It is dropped instead, the record left as the cancel wrote it.
func TestAKeptJobCanceledIsNotQueuedAgain(t *testing.T) {
	t.Parallel()
	k := startKeptElsewhere(t)
	tb := k.tb
	k.cancel.Store(true)
	if err := <-k.canceled; err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the kept delivery let go", func() bool { return k.left.Load() >= 1 })
	if rec, _, err := tb.b.Store.Get(ctxT(t), k.j.ID); err != nil || rec.State != broker.StateCanceled {
		t.Fatalf("canceled job's record %+v (%v), want it canceled", rec, err)
	}
	if st, err := tb.b.Store.QueueState(ctxT(t)); err != nil || st.Msgs != 1 {
		t.Errorf("queue holds %d messages (%v) after the kept job's cancel, want the other job's alone", st.Msgs, err)
	}
	if _, err := tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: "tiny-z", Kind: broker.KindChat}, []byte(chatBody("tiny-z", 0))); err != nil {
		t.Errorf("submit into the place the canceled job left: %v", err)
	}
}

// Each due of a job kept for a full queue and not run here rewrote its record before a
// requeue the queue refused: a state event on foreman.job.<id>.state and one of the
// bucket's 16 revisions of the job (the webhooks' history) spent each time, up to once a
// minute for as long as the queue stays full. The record is left alone while the queue is
// full, and rewritten by the requeue that room lets through.
func TestAKeptJobsDuesDoNotRewriteItsRecord(t *testing.T) {
	t.Parallel()
	k := startKeptElsewhere(t)
	tb := k.tb
	_, rev0, err := tb.b.Store.Get(ctxT(t), k.j.ID)
	if err != nil {
		t.Fatal(err)
	}
	from := k.kept.Load()
	eventually(t, 10*time.Second, "three more dues of the kept job", func() bool { return k.kept.Load() >= from+3 })
	rec, rev, err := tb.b.Store.Get(ctxT(t), k.j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rev != rev0 {
		t.Errorf("kept job's record rewritten at its dues in a full queue: revision %d, was %d", rev, rev0)
	}
	if _, err := tb.b.Store.Cancel(ctxT(t), k.other.ID, ""); err != nil { // room again
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the kept job requeued once the queue had room", func() bool { return k.left.Load() >= 1 })
	after, newRev, err := tb.b.Store.Get(ctxT(t), k.j.ID)
	if err != nil || after.State != broker.StateRetrying || newRev <= rev || after.Attempt != rec.Attempt {
		t.Fatalf("requeued job's record %+v at revision %d (%v), want it rewritten (after %d), retrying as before", after, newRev, err, rev)
	}
}

// A job put back for a retry whose queue message JetStream drops at the job TTL (a run
// that outlived the TTL has lost it already) is requeued rather than NAKed; in a full
// queue the requeue was refused and the NAK went to a message that was gone: the job
// was left nowhere, its record retrying with no message until it expired. Its delivery
// is kept instead (ADR-0100), and the job runs.
func TestARetryPastTheTTLInAFullQueueRuns(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts, c.MaxQueue = 2, 1 }))
	j := tb.chat(t, "tiny-a", 1)
	st, err := tb.b.Store.QueueState(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	tb.fake.FailNext(1, ollamatest.DropConnection) // the first attempt, a retry
	atStart, goOn := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	cfg := worker.WithBeforeStart(worker.Config{RetryDelay: time.Millisecond}, func(id string) {
		if id == j.ID && first.CompareAndSwap(false, true) {
			close(atStart)
			<-goOn
		}
	})
	// Its message near the job TTL, as a run that outlived it finds it.
	cfg = worker.WithOutlivesQueue(cfg, func(id string) bool { return id == j.ID })
	tb.start(t, cfg)
	<-atStart
	// While it runs, JetStream drops its message at the TTL, and a submit fills the queue.
	if err := tb.b.Store.DeleteQueued(ctxT(t), st.LastSeq); err != nil {
		t.Fatal(err)
	}
	other := tb.chat(t, "tiny-a", 0)
	close(goOn)
	if got := tb.waitEnded(t, j.ID); got.State != broker.StateDone || got.Attempt != 2 {
		t.Errorf("job ended %s (%s) at attempt %d, want done at 2", got.State, got.Error, got.Attempt)
	}
	if got := tb.waitEnded(t, other.ID); got.State != broker.StateDone {
		t.Errorf("other job ended %s (%s), want done", got.State, got.Error)
	}
}

// A retry kept for a full queue (ADR-0100) whose message, never renewed while kept,
// passes the expiry's age (broker.StaleAge) before its due is not ended "expired:
// waited in the queue for the job TTL": it did not wait in the queue, this worker held
// it, and at its due it runs from its delivery, as in a queue with room its requeue
// would have run it. The expiry took its record, retrying, for a waiting job's and
// ended it failed (after 9 s of a 12 s TTL spent running and kept, tried once), while
// the same job in a roomy queue ended done at attempt 2.
func TestAKeptRetryIsNotExpiredWhileKept(t *testing.T) {
	t.Parallel()
	const ttl = 12 * time.Second // StaleAge 9 s, an expiry look every 1.5 s
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) {
		c.JobTTL, c.AckWait, c.MaxQueue, c.MaxAttempts = ttl, 3*time.Second, 1, 3
	}))
	j := tb.chat(t, "tiny-a", 1)
	tb.fake.FailNext(1, ollamatest.DropMidStream) // the first attempt, a retry
	// Kept past the expiry's age (9 s) and due before the queue's MaxAge drops its
	// message (12 s): at least one expiry look falls in between.
	tb.start(t, worker.Config{RetryDelay: ttl - ttl/8})
	if got := tb.waitEnded(t, j.ID); got.State != broker.StateDone || got.Attempt != 2 {
		t.Errorf("kept retry ended %s (%s) at attempt %d, want done at 2", got.State, got.Error, got.Attempt)
	}
}

// A retry kept for a full queue is not ended "expired" at its due either, while the
// worker takes its kept delivery up again (the due's requeue, under way): the delivery
// was out of the kept list then, its record retrying, and an expiry look that met it so
// ended it failed, as it ended the job waiting beside it. Here the due's requeue waits
// until such a look has ended that other job (w, of a model no Mac here runs, queued
// after j: j's message is the older), so the look certainly met j.
func TestAKeptRetryIsNotExpiredAtItsDue(t *testing.T) {
	t.Parallel()
	const ttl = 12 * time.Second // StaleAge 9 s, an expiry look every 1.5 s
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) {
		c.JobTTL, c.AckWait, c.MaxQueue, c.MaxAttempts = ttl, 3*time.Second, 2, 3
	}))
	inv := tb.polledInventory(t)
	j := tb.chat(t, "tiny-a", 1)
	w := tb.chat(t, "tiny-z", 0)                  // waits, fills the queue, and expires
	tb.fake.FailNext(1, ollamatest.DropMidStream) // j's first attempt, a retry
	wEnded := make(chan struct{})
	var requeues atomic.Int32
	cfg := worker.Config{Inventory: inv, RetryDelay: time.Second,
		Runs: func(_ context.Context, model string) bool { return inv.HasModel(model) }}
	// Its retry is requeued, not NAKed (as one whose message may reach the TTL first),
	// and the full queue refuses that: kept.
	cfg = worker.WithOutlivesQueue(cfg, func(id string) bool { return id == j.ID })
	cfg = worker.WithRequeueFault(cfg, func(id string) error {
		if id == j.ID && requeues.Add(1) == 2 { // the first is refused for the full queue: kept
			select {
			case <-wEnded:
			case <-time.After(30 * time.Second):
			}
		}
		return nil
	})
	tb.start(t, cfg)
	if got := tb.waitEnded(t, w.ID); got.State != broker.StateFailed {
		t.Fatalf("the job no Mac runs ended %s (%s), want failed, expired", got.State, got.Error)
	}
	close(wEnded)
	if n := requeues.Load(); n < 2 {
		t.Fatalf("%d requeues of the kept retry before the expiry look, want its due's under way", n)
	}
	if got := tb.waitEnded(t, j.ID); got.State != broker.StateDone || got.Attempt != 2 {
		t.Errorf("kept retry ended %s (%s) at attempt %d, want done at 2", got.State, got.Error, got.Attempt)
	}
}
