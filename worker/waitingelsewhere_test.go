package worker_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// With Config.Runs set, as foreman serve always sets it, the queue view keeps a queue the
// worker leaves to another Mac for a while (ADR-0066) in its plan, expected here once the
// hold ends, and shows the jobs of a model it does not run waiting elsewhere (ADR-0073),
// a retrying one with its failed attempt.
func TestQueueViewWithRunsSplitsHeldQueuesFromOthers(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNextOn("/api/chat", 2, ollamatest.StallMidStream)
	var runsB atomic.Bool
	runsB.Store(true)
	w := tb.start(t, worker.Config{StreamIdleTimeout: 200 * time.Millisecond, MaxWait: time.Hour, IdlePoll: 20 * time.Millisecond,
		Runs: func(_ context.Context, model string) bool { return model != "tiny-b:latest" || runsB.Load() },
		// Another Mac, live and reachable, has every model.
		Elsewhere: func(context.Context, string) bool { return true }})
	held := tb.chat(t, "tiny-a", 1)
	if got := tb.waitState(t, held.ID, broker.StateRetrying); got.Attempt != 1 {
		t.Fatalf("tiny-a job retrying after attempt %d, want 1 (%s)", got.Attempt, got.Error)
	}
	other := tb.chat(t, "tiny-b", 2)
	if got := tb.waitState(t, other.ID, broker.StateRetrying); got.Attempt != 1 {
		t.Fatalf("tiny-b job retrying after attempt %d, want 1 (%s)", got.Attempt, got.Error)
	}
	// The record says retrying before the worker has put the job back: until then the
	// view shows it running.
	eventually(t, 10*time.Second, "the tiny-b job's attempt over", func() bool {
		v, err := w.QueueView(ctxT(t), time.Now())
		return err == nil && v.Running == ""
	})
	runsB.Store(false) // tiny-b is gone from this Mac

	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Queued) != 1 || v.Queued[0].JobID != held.ID || !v.Queued[0].LeftElsewhere || v.Queued[0].QueuePosition != 1 {
		t.Errorf("queued %+v: want the tiny-a job %s at position 1, left to another Mac for now", v.Queued, held.ID)
	}
	if len(v.WaitingElsewhere) != 1 {
		t.Fatalf("waiting elsewhere %+v: want the tiny-b job %s", v.WaitingElsewhere, other.ID)
	}
	if q := v.WaitingElsewhere[0]; q.JobID != other.ID || q.State != broker.StateRetrying || q.Attempts != 1 || q.Error == "" ||
		q.QueuePosition != 0 || !q.ETA.IsZero() {
		t.Errorf("waiting elsewhere %+v: want the tiny-b job %s retrying after attempt 1, with its error, no position or ETA", q, other.ID)
	}
}
