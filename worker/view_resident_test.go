package worker_test

import (
	"slices"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// With several models resident, the view sees the loaded set the next pick will (the
// last /api/ps, the last runner first), not only the runner run last: a job of another
// resident model costs no swap, and the view's loaded models list both.
func TestQueueViewSeesResidentModels(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.SetLoaded("tiny-a")
	tb.fake.SetResident("tiny-b")
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: tb.target, Logger: testLogger()})
	if err := inv.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	w := tb.start(t, worker.Config{Inventory: inv})
	done := tb.chat(t, "tiny-a", 0)
	tb.waitState(t, done.ID, broker.StateDone)
	// The next tiny-a job needs no /api/ps read: the inventory's last poll is older than
	// the job that ended.
	release := tb.fake.Hold("tiny-a")
	defer release()
	held := tb.chat(t, "tiny-a", 1)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 2); err != nil {
		t.Fatal(err)
	}
	b := tb.submit(t, "tiny-b", broker.KindGenerate, `{"model":"tiny-b","prompt":"p"}`)
	v := viewWith(t, w, b.ID)
	if v.Running != held.ID {
		t.Fatalf("running %q, want %s", v.Running, held.ID)
	}
	want := []string{"tiny-a:latest", "tiny-b:latest"}
	if !slices.Equal(v.Loaded, want) {
		t.Fatalf("loaded %v, want %v", v.Loaded, want)
	}
}

// viewWith is the worker's queue view once it holds job id.
func viewWith(t *testing.T, w *worker.Worker, id string) *broker.QueueView {
	t.Helper()
	var v *broker.QueueView
	eventually(t, 30*time.Second, "job "+id+" in the view", func() bool {
		var err error
		if v, err = w.QueueView(ctxT(t), time.Now()); err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(v.Queued, func(q broker.QueuedJob) bool { return q.JobID == id })
	})
	return v
}
