package worker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A job that fails on its last attempt because the target is not there pauses the worker
// as an attempt retried does: the next job waits for the target instead of spending an
// attempt on it (with FOREMAN_MAX_ATTEMPTS=1, instead of failing too).
func TestLastAttemptOnAGoneTargetPausesTheWorker(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 1 }))
	tb.fake.SetDown(true)
	jobs := []*broker.Job{tb.chat(t, "tiny-a", 1), tb.chat(t, "tiny-a", 2)}
	w := tb.start(t, worker.Config{})
	eventually(t, 10*time.Second, "the worker paused with a job failed, or both ended", func() bool {
		e := ended(t, tb, jobs)
		return len(e) == 2 || len(e) == 1 && w.Paused() != nil
	})
	if e := ended(t, tb, jobs); len(e) != 1 {
		t.Fatalf("%d jobs ended while the target was down, want the first only: %v", len(e), e)
	}
	first := record(t, tb, jobs[0].ID)
	if first.State != broker.StateFailed || !strings.HasPrefix(first.Error, "attempts exhausted: ") {
		t.Errorf("first job %s %q: want failed, attempts exhausted", first.State, first.Error)
	}
	if n := len(inferenceCalls(tb.fake)); n != 1 {
		t.Errorf("%d calls while the target was down, want 1", n)
	}

	tb.fake.SetDown(false)
	if got := tb.waitState(t, jobs[1].ID, broker.StateDone); got.Attempt != 1 {
		t.Errorf("second job done after %d attempts, want 1", got.Attempt)
	}
}

// goneAfterCut is a target that goes away with the connection it cut: every request
// after it is refused.
type goneAfterCut struct {
	ollama.Client
	fake *ollamatest.Server
}

func (g goneAfterCut) Stream(ctx context.Context, path string, body []byte, fn func([]byte) error, opts ...ollama.StreamOption) (string, error) {
	ct, err := g.Client.Stream(ctx, path, body, fn, opts...)
	var ce *ollama.ConnectionError
	if errors.As(err, &ce) {
		g.fake.SetDown(true)
	}
	return ct, err
}

// A sync job whose answer had begun when its target went away fails at once (its caller
// has part of the answer); the worker pauses all the same, and the job behind it waits
// for the target instead of spending an attempt on it.
func TestSyncJobCutOffByAGoneTargetPausesTheWorker(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNext(1, ollamatest.DropMidStream)
	sync, err := tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true}, []byte(chatBody("tiny-a", 1)))
	if err != nil {
		t.Fatal(err)
	}
	next := tb.chat(t, "tiny-a", 2)
	w := tb.start(t, worker.Config{Target: goneAfterCut{Client: tb.target, fake: tb.fake}})
	tb.waitState(t, sync.ID, broker.StateFailed)
	eventually(t, 10*time.Second, "the worker paused", func() bool { return w.Paused() != nil })
	if n := len(inferenceCalls(tb.fake)); n != 1 {
		t.Errorf("%d calls, want the cut one only", n)
	}
	if got := record(t, tb, next.ID); got.Attempt != 0 {
		t.Errorf("the job behind: %s after %d attempts, want none spent", got.State, got.Attempt)
	}

	tb.fake.SetDown(false)
	if got := tb.waitState(t, next.ID, broker.StateDone); got.Attempt != 1 {
		t.Errorf("the job behind done after %d attempts, want 1", got.Attempt)
	}
}
