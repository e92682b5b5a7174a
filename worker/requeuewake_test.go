package worker_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A job requeued by another foreman (a new message of the same job: its last delivery
// given back by a stop, say) wakes an idle worker that took the job once before: its
// wake-up was taken for a stale one (a job fetched since), and the job waited for the
// worker's next IdlePoll.
func TestARequeuedJobWakesAWorkerThatTookItBefore(t *testing.T) {
	t.Parallel()
	tb := setup(t) // a shared store: not the embedded server's own
	inv := tb.polledInventory(t)
	deleteModel(t, tb.fake, "tiny-b") // on the Mac, unseen by the last poll
	var longIdle atomic.Bool          // the worker waits for a wake-up or its IdlePoll
	cfg := worker.Config{Inventory: inv, IdlePoll: time.Hour, RetryDelay: time.Millisecond,
		Runs: func(_ context.Context, model string) bool { return inv.HasModel(model) }}
	w := tb.start(t, worker.WithOnIdle(cfg, func(wait time.Duration) { longIdle.Store(wait >= time.Minute) }))
	j := tb.chat(t, "tiny-b", 1)
	// Taken here, answered 404: the model is gone, the job waits for a Mac that has it.
	if got := tb.waitState(t, j.ID, broker.StateRetrying); !strings.Contains(got.Error, "no longer on this foreman's Ollama") {
		t.Fatalf("job retrying with %q, want the model said gone", got.Error)
	}
	waitBetweenJobs(t, w)

	// Another foreman takes it and, stopping, puts it back at its queue's end.
	other, err := broker.Open(ctxT(t), broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	token := queueKeyOf(t, &broker.Job{Model: "tiny-b", Kind: broker.KindChat}, chatBody("tiny-b", 1))
	var d *broker.Lease
	eventually(t, 10*time.Second, "the other foreman's delivery of the job", func() bool {
		d, err = other.Next(ctxT(t), token)
		if err != nil {
			t.Fatal(err)
		}
		return d != nil
	})
	tb.fake.AddModel(ollamatest.Model{Name: "tiny-b"}) // back on this Mac
	if err := inv.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the worker idle until a wake-up", longIdle.Load)
	if err := other.Requeue(ctxT(t), d); err != nil {
		t.Fatal(err)
	}
	if got := tb.waitEnded(t, j.ID); got.State != broker.StateDone {
		t.Errorf("job ended %s (%s), want done", got.State, got.Error)
	}
}
