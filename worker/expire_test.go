package worker_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A job that waits in the queue for a job TTL (behind a job that runs longer) ends failed,
// saying why, and leaves the queue, instead of vanishing without a state, an event or a
// webhook when JetStream drops its queue message and record at the TTL. The job that
// runs meanwhile is left alone and ends done.
func TestJobWaitingAJobTTLEndsFailed(t *testing.T) {
	t.Parallel()
	// The worker ends a waiting job by seven eighths of the TTL: the last eighth (1.5 s)
	// is what a stall of the machine may take before JetStream drops the job itself.
	const ttl = 12 * time.Second
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) {
		c.JobTTL = ttl
		c.AckWait = 3 * time.Second
	}))
	release := tb.fake.Hold("tiny-a")
	defer release()
	running := tb.chat(t, "tiny-a", 1)
	tb.start(t, worker.Config{})
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	waiting := tb.chat(t, "tiny-a", 1)

	got := tb.waitState(t, waiting.ID, broker.StateFailed)
	if got.Error != broker.ExpiredError(ttl, 0) {
		t.Errorf("error %q, want %q", got.Error, broker.ExpiredError(ttl, 0))
	}
	if got.Attempt != 0 || got.StartedAt != nil {
		t.Errorf("expired job shows a start: attempt %d, started %v", got.Attempt, got.StartedAt)
	}
	if waited := got.FinishedAt.Sub(got.CreatedAt); waited < ttl/2 || waited >= ttl {
		t.Errorf("ended after %v in the queue, want within the TTL %v and not before half of it", waited, ttl)
	}
	rec, _, err := tb.b.Store.Get(ctxT(t), running.ID)
	if err != nil || rec.State.Terminal() {
		t.Fatalf("running job: %+v, %v; want it still running", rec, err)
	}
	release()
	tb.waitState(t, running.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
	if n := len(inferenceCalls(tb.fake)); n != 1 {
		t.Errorf("target called %d times, want once (the expired job never runs)", n)
	}
}

// A stop is not held by the expiry's look at the queue: during a NATS outage (when
// operators restart foreman) that look waits for its store timeout, and the worker's
// stop, and with it the shutdown's deadline, waited with it.
func TestStopDuringOutageIsNotHeldByTheExpiry(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.JobTTL = 800 * time.Millisecond }))
	w := tb.start(t, worker.Config{})
	tb.b.Server.Shutdown() // the store's connection now waits to reconnect
	eventually(t, 10*time.Second, "connection lost", func() bool { return !tb.b.Conn.IsConnected() })
	stopsWithin(t, w, "the expiry's look at an unreachable store")
}

// Nor by the sweep a worker makes as it starts (the sync jobs of dead callers): with
// NATS down its read of the records waited for its store timeout (30 s), and a stop with
// it.
func TestStopDuringOutageIsNotHeldByTheStartSweep(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.b.Server.Shutdown()
	eventually(t, 10*time.Second, "connection lost", func() bool { return !tb.b.Conn.IsConnected() })
	var logs lockedBuffer
	w := tb.start(t, worker.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	eventually(t, 10*time.Second, "worker started", func() bool { return strings.Contains(logs.String(), "worker started") })
	stopsWithin(t, w, "the start-up sweep's look at an unreachable store")
}

// stopsWithin stops w with half a second to finish, failing the test should the stop
// take 20 s: what it would wait for (a store timeout of 30 s) is what holds it.
func stopsWithin(t *testing.T, w *worker.Worker, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	stopped := make(chan struct{})
	go func() {
		_ = w.Stop(ctx)
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(20 * time.Second):
		t.Fatal("the worker's stop waited for " + what)
	}
}
