package worker_test

import (
	"slices"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A target that hangs as a whole (SIGSTOP) while a job runs answers neither that job nor
// the polls: what it holds is unknown. The view named the running job's model loaded
// until the attempt was given up, beside /healthz's empty loaded list and the polls
// saying the target is not there.
func TestQueueViewLoadedIsUnknownWhileTheTargetHangsUnderAJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := tb.polledInventory(t)
	w := tb.start(t, worker.Config{Inventory: inv})
	release := tb.fake.Hold("tiny-a")
	defer release()
	j := tb.chat(t, "tiny-a", 1)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if v.Running != j.ID || !slices.Equal(v.Loaded, []string{"tiny-a:latest"}) {
		t.Fatalf("running %q loaded %v while the target answers, want %s and [tiny-a:latest]", v.Running, v.Loaded, j.ID)
	}
	tb.goSilent(t, inv) // the held call stays open: the job still runs
	if v, err = w.QueueView(ctxT(t), time.Now()); err != nil {
		t.Fatal(err)
	}
	if v.Running != j.ID {
		t.Fatalf("running %q, want the job still running, %s", v.Running, j.ID)
	}
	if len(v.Loaded) != 0 {
		t.Errorf("loaded %v while the target answers no poll, want none known", v.Loaded)
	}
}
