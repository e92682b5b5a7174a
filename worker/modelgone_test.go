package worker_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A model deleted on the Mac (ollama rm there) while its jobs wait on a shared NATS: the
// worker took their queue by its model list, polled before the deletion, and the target
// answered each job it took 404, which failed the job, though another Mac may have the
// model (or get it back) and a worker takes no job of a model its list lacks: the job
// ahead, and the one the pick after it took before its /api/ps read polled the list
// again, failed, the rest waited. Now the 404 has the list polled again, and a model gone
// from it puts the job back uncounted, where it waits with the others for a Mac that has it.
func TestAJobOfAModelDeletedOnTheMacWaitsForOneThatHasIt(t *testing.T) {
	t.Parallel()
	tb := setup(t) // a shared store: not the embedded server's own
	inv := tb.polledInventory(t)
	w := tb.start(t, worker.Config{Inventory: inv, IdlePoll: 20 * time.Millisecond, RetryDelay: 50 * time.Millisecond,
		// As foreman serve's with no other foreman live: the models its own Mac lists.
		Runs: func(_ context.Context, model string) bool { return inv.HasModel(model) }})
	req, err := http.NewRequestWithContext(ctxT(t), http.MethodDelete, tb.fake.URL+"/api/delete", strings.NewReader(`{"model":"tiny-b"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !inv.HasModel("tiny-b") {
		t.Fatalf("delete answered %d; inventory has tiny-b %v: want it deleted on the Mac, unseen by the last poll", resp.StatusCode, inv.HasModel("tiny-b"))
	}

	jobs := []*broker.Job{tb.chat(t, "tiny-b", 1), tb.chat(t, "tiny-b", 2), tb.chat(t, "tiny-b", 3)}
	first := tb.waitState(t, jobs[0].ID, broker.StateRetrying)
	if first.Attempt != 0 || !strings.Contains(first.Error, "no longer on this foreman's Ollama") {
		t.Errorf("first job retrying at attempt %d with %q, want its attempt given back, the model said gone", first.Attempt, first.Error)
	}
	eventually(t, 10*time.Second, "every tiny-b job waiting for a Mac that has the model", func() bool {
		v, err := w.QueueView(ctxT(t), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return len(v.WaitingElsewhere) == len(jobs)
	})
	chats := 0
	for _, c := range tb.fake.Calls() {
		if c.Path == "/api/chat" {
			chats++
		}
	}
	if chats != 1 {
		t.Errorf("%d chat calls, want the one answered 404", chats)
	}

	tb.fake.AddModel(ollamatest.Model{Name: "tiny-b"}) // pulled again (or another Mac's)
	if err := inv.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs {
		if got := tb.waitEnded(t, j.ID); got.State != broker.StateDone {
			t.Errorf("job %s ended %s (%s), want done", j.ID, got.State, got.Error)
		}
	}
}
