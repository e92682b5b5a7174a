package worker_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A job kept for a full queue (ADR-0100) whose model left this Mac on a shared NATS: at
// each due the kept delivery, its requeue refused again, was run here once more, against
// a target that no longer has the model (one 404, a poll of the model list, the record
// written loading and back to retrying each time), though this worker takes no job of a
// model its list lacks. It waits kept instead, and goes back to the queue, for a Mac that
// has the model, once there is room.
func TestAKeptJobWhoseModelLeftTheMacWaitsForRoom(t *testing.T) {
	t.Parallel()
	// A queue of two places and one attempt: JetStream's third delivery is the last.
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts, c.MaxQueue = 1, 2 }))
	inv := tb.polledInventory(t)

	// The queue's other place: a job of a model another Mac runs.
	other := tb.chat(t, "tiny-z", 0)
	j := tb.chat(t, "tiny-b", 1)
	// Two "not now" answers (not counted) spend the job's first two deliveries; the 404 on
	// the third, its last, finds the model gone (deleted as that attempt starts, after the
	// pick's poll), and its requeue finds the queue full.
	tb.fake.FailNext(2, ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded"))
	tb.fake.FailNext(1, ollamatest.FailStatus(http.StatusNotFound, `model "tiny-b" not found, try pulling it first`))
	var starts, requeues atomic.Int32
	cfg := worker.Config{Inventory: inv, RetryDelay: time.Millisecond, IdlePoll: 20 * time.Millisecond,
		Runs: func(_ context.Context, model string) bool { return inv.HasModel(model) }}
	cfg = worker.WithBeforeStart(cfg, func(id string) {
		if id == j.ID && starts.Add(1) == 3 {
			deleteModel(t, tb.fake, "tiny-b") // on the Mac, before the 404 is looked into
		}
	})
	tb.start(t, worker.WithRequeueFault(cfg, func(id string) error {
		if id == j.ID {
			requeues.Add(1)
		}
		return nil
	}))

	// The requeue at the last delivery, then three dues of the kept delivery, each refused.
	eventually(t, 10*time.Second, "the kept job's requeue tried at several dues", func() bool { return requeues.Load() >= 4 })
	if got := modelCalls(tb.fake, "tiny-b"); got != 3 {
		t.Errorf("%d chat calls of tiny-b while the job was kept, want 3 (two busy, the 404): a model gone from the Mac is not called again", got)
	}
	before, err := tb.b.Store.QueueState(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tb.b.Store.Cancel(ctxT(t), other.ID, ""); err != nil { // room again
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the kept job requeued once the queue had room", func() bool {
		st, err := tb.b.Store.QueueState(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		return st.LastSeq > before.LastSeq && st.Msgs == 1
	})
	if rec, _, err := tb.b.Store.Get(ctxT(t), j.ID); err != nil || rec.State != broker.StateRetrying {
		t.Fatalf("requeued job's record %+v (%v), want it waiting (retrying)", rec, err)
	}

	tb.fake.AddModel(ollamatest.Model{Name: "tiny-b"}) // back here (or a Mac that has it)
	if err := inv.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if got := tb.waitEnded(t, j.ID); got.State != broker.StateDone || got.Attempt != 1 {
		t.Errorf("job ended %s (%s) at attempt %d, want done at 1", got.State, got.Error, got.Attempt)
	}
	if got := modelCalls(tb.fake, "tiny-b"); got != 4 {
		t.Errorf("%d chat calls of tiny-b, want 4 (two busy, the 404, the run)", got)
	}
}

// deleteModel deletes model on fake as `ollama rm` does.
func deleteModel(t *testing.T, fake *ollamatest.Server, model string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxT(t), http.MethodDelete, fake.URL+"/api/delete", strings.NewReader(`{"model":"`+model+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("delete %s answered %d", model, resp.StatusCode)
	}
}

// modelCalls counts the target's chat calls of model.
func modelCalls(fake *ollamatest.Server, model string) int {
	n := 0
	for _, c := range fake.Calls() {
		if c.Path == "/api/chat" && strings.HasPrefix(c.Model, model) {
			n++
		}
	}
	return n
}
