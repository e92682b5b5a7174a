package worker_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// The queue view predicts the order the worker really runs a mixed backlog in (classes,
// programs, models, load options, the consecutive cap): both come from one pick rule.
// MaxWait is long: the view ages the jobs by the expected durations (the priors, as
// nothing ran yet), while the fake answers at once.
func TestQueueViewPredictsRunOrder(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	first := tb.chat(t, "tiny-a", 0)
	w := tb.start(t, worker.Config{MaxConsecutive: 2, MaxWait: time.Hour})
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	jobs := []queued{
		{tag: "a1", model: "tiny-a"},
		{tag: "b1", model: "tiny-b"},
		{tag: "lowa", model: "tiny-a", class: broker.PriorityLow},
		{tag: "a2", model: "tiny-a", program: "p"},
		{tag: "b2", model: "tiny-b", program: "p"},
		{tag: "hib", model: "tiny-b", class: broker.PriorityHigh},
		{tag: "a3", model: "tiny-a", program: "q"},
		{tag: "c256", model: "tiny-a", options: `{"num_ctx":256}`},
		{tag: "a4", model: "tiny-a"},
		{tag: "b3", model: "tiny-b"},
		{tag: "a5", model: "tiny-a", program: "p"},
	}
	tagOf := map[string]string{}
	for _, q := range jobs {
		body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}]`, q.model, q.tag)
		if q.options != "" {
			body += `,"options":` + q.options
		}
		body += "}"
		j, err := tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: q.model, Kind: broker.KindChat, Priority: q.class, Program: q.program}, []byte(body))
		if err != nil {
			t.Fatalf("submit %s: %v", q.tag, err)
		}
		tagOf[j.ID] = q.tag
	}
	asked := time.Now()
	v, err := w.QueueView(ctxT(t), asked)
	if err != nil {
		t.Fatal(err)
	}
	if v.Running != first.ID {
		t.Fatalf("running %q, want the held job %s", v.Running, first.ID)
	}
	if !slices.Equal(v.Loaded, []string{"tiny-a:latest"}) {
		t.Fatalf("loaded %v, want [tiny-a:latest]", v.Loaded)
	}
	var predicted []string
	for i, q := range v.Queued {
		if q.QueuePosition != i+1 {
			t.Fatalf("position %d at index %d", q.QueuePosition, i)
		}
		if i > 0 && q.ETA.Before(v.Queued[i-1].ETA) {
			t.Fatalf("eta of position %d (%v) before its predecessor's (%v)", i+1, q.ETA, v.Queued[i-1].ETA)
		}
		if q.ETA.Before(asked) {
			t.Fatalf("eta %v in the past", q.ETA)
		}
		predicted = append(predicted, tagOf[q.JobID])
	}
	release()
	for id := range tagOf {
		tb.waitState(t, id, broker.StateDone)
	}
	var ran []string
	for _, c := range tb.fake.Calls() {
		if m := tagRE.FindSubmatch(c.Body); m != nil && string(m[1]) != "question" {
			ran = append(ran, string(m[1]))
		}
	}
	if !slices.Equal(predicted, ran) {
		t.Fatalf("predicted %v, ran %v", predicted, ran)
	}
	// Once the jobs ran, the view holds none of them.
	v, err = w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Queued) != 0 || v.Running != "" {
		t.Fatalf("after the backlog: running %q, queued %v", v.Running, v.Queued)
	}
}

// A job in a retry back-off is waiting too: the view gives it a position and an ETA.
func TestQueueViewShowsRetryingJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNext(1, ollamatest.DropConnection)
	w := tb.start(t, worker.Config{RetryDelay: time.Minute})
	j := tb.chat(t, "tiny-a", 1)
	tb.waitState(t, j.ID, broker.StateRetrying)
	v := idleView(t, w)
	if v.Running != "" || len(v.Queued) != 1 || v.Queued[0].JobID != j.ID || v.Queued[0].QueuePosition != 1 {
		t.Fatalf("view while retrying: running %q, queued %+v", v.Running, v.Queued)
	}
}

// A job whose answer is out and whose result is still being stored (its message not yet
// acked) waits no more: the view shows neither it running nor it waiting.
func TestQueueViewSkipsFinishingJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	held, release := make(chan string, 1), make(chan struct{})
	w := tb.start(t, worker.WithBeforeStoreDone(worker.Config{}, func(id string) {
		held <- id
		<-release
	}))
	defer close(release)
	j := tb.chat(t, "tiny-a", 1)
	select {
	case <-held:
	case <-waitCtx(t).Done():
		t.Fatal("the job never reached its result write")
	}
	v := idleView(t, w)
	if v.Running != "" || len(v.Queued) != 0 {
		t.Fatalf("view while %s stores its result: running %q, queued %+v", j.ID, v.Running, v.Queued)
	}
}

// A job that ends while the view reads the queue heads' records (its message still
// listed, its ack made) is done, not waiting: its record, read again, says so.
func TestQueueViewSkipsJobEndingWhileHeadsAreRead(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	held, release := make(chan string, 1), make(chan struct{})
	var (
		w    *worker.Worker
		once sync.Once
	)
	cfg := worker.WithBeforeStoreDone(worker.Config{}, func(id string) {
		held <- id
		<-release
	})
	cfg = worker.WithViewAfterHeads(cfg, func() {
		once.Do(func() {
			id := <-held
			close(release)
			eventually(t, 10*time.Second, "the job ends", func() bool { return !w.Own(id) })
		})
	})
	w = tb.start(t, cfg)
	j := tb.chat(t, "tiny-a", 1)
	tb.waitState(t, j.ID, broker.StateWorking) // its record, read as it finishes, says it runs
	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if v.Running != "" || len(v.Queued) != 0 || len(v.Elsewhere) != 0 {
		t.Fatalf("view as %s ended: running %q, queued %+v, elsewhere %+v", j.ID, v.Running, v.Queued, v.Elsewhere)
	}
}

// idleView is the worker's queue view once no attempt runs: an attempt's bookkeeping ends
// just after its state is written (retrying) or its result's write began (done).
func idleView(t *testing.T, w *worker.Worker) *broker.QueueView {
	t.Helper()
	var v *broker.QueueView
	eventually(t, 10*time.Second, "no attempt running in the view", func() bool {
		var err error
		if v, err = w.QueueView(ctxT(t), time.Now()); err != nil {
			t.Fatal(err)
		}
		return v.Running == ""
	})
	return v
}

// With two foremen on one NATS, the job another foreman's worker runs is no waiting job
// in this one's view (no position 1, no ETA "any moment"): the view shows it running
// elsewhere, and the jobs behind it wait from position 1.
func TestQueueViewShowsJobRunningElsewhere(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	ctx := ctxT(t)
	other, err := broker.Open(ctx, broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	release := tb.fake.Hold("tiny-a")
	defer release()
	tb.startOn(t, other, worker.Config{}) // the other Mac's worker
	ours, err := worker.New(worker.Config{Store: tb.b.Store, Target: tb.target, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	running := tb.chat(t, "tiny-a", 1)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	waiting := tb.chat(t, "tiny-a", 2)
	v := tb.viewOnceStarted(t, ours, running.ID)
	if len(v.Queued) != 1 || v.Queued[0].JobID != waiting.ID || v.Queued[0].QueuePosition != 1 {
		t.Errorf("queued %+v, want only %s at position 1", v.Queued, waiting.ID)
	}
	if len(v.Elsewhere) != 1 || v.Elsewhere[0].JobID != running.ID || v.Elsewhere[0].Model != "tiny-a" ||
		(v.Elsewhere[0].State != broker.StateLoading && v.Elsewhere[0].State != broker.StateWorking) {
		t.Errorf("running elsewhere %+v, want %s", v.Elsewhere, running.ID)
	}
}

// An /api/ps read after the last job ended says what the target has loaded, not that
// job's model: another client of the target (an embedding passed straight on) may have
// made it swap since.
func TestQueueViewLoadedFollowsALaterPs(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: tb.target, Logger: testLogger()})
	w := tb.start(t, worker.Config{Inventory: inv})
	j := tb.chat(t, "tiny-b", 1)
	tb.waitState(t, j.ID, broker.StateDone)
	tb.fake.SetLoaded("tiny-a")
	var v *broker.QueueView
	eventually(t, 10*time.Second, "the view shows what /api/ps lists", func() bool {
		if err := inv.Refresh(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		var err error
		if v, err = w.QueueView(ctxT(t), time.Now()); err != nil {
			t.Fatal(err)
		}
		return slices.Equal(v.Loaded, []string{"tiny-a:latest"})
	})
}

// viewOnceStarted is w's queue view once job id's start (by another worker) is stored.
func (tb *testBundle) viewOnceStarted(t *testing.T, w *worker.Worker, id string) *broker.QueueView {
	t.Helper()
	ctx := ctxT(t)
	eventually(t, 10*time.Second, "the other worker's start stored", func() bool {
		j, _, err := tb.b.Store.Get(ctx, id)
		return err == nil && (j.State == broker.StateLoading || j.State == broker.StateWorking)
	})
	v, err := w.QueueView(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// While the target is not there (refused, unanswered, a proxy's 502), what it has loaded
// is unknown: the view named the model run last, beside the pause that says the Mac is
// down, as if it were still loaded there. The pick still prefers that model once the
// target is back; the view shows nothing loaded until a poll says.
func TestQueueViewLoadedIsUnknownWhileTheTargetIsDown(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: tb.target, Logger: testLogger()})
	w := tb.start(t, worker.Config{Inventory: inv})
	j := tb.chat(t, "tiny-b", 1)
	tb.waitState(t, j.ID, broker.StateDone)
	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v.Loaded, []string{"tiny-b:latest"}) {
		t.Fatalf("loaded %v after a tiny-b job, want [tiny-b:latest]", v.Loaded)
	}
	tb.fake.SetDown(true)
	if err := inv.Refresh(ctxT(t)); err == nil || !ollama.Unreachable(err) {
		t.Fatalf("poll of a target that is down: %v", err)
	}
	if v, err = w.QueueView(ctxT(t), time.Now()); err != nil {
		t.Fatal(err)
	}
	if len(v.Loaded) != 0 {
		t.Errorf("loaded %v while the target is down, want none known", v.Loaded)
	}
}

// A job running on another Mac names that Mac (its foreman's target name) in its record
// and in the view; once that foreman is gone (its presence withdrawn or lapsed), the view
// says so: the job's record still says working, but no one runs it until its message
// comes back (ADR-0064).
func TestQueueViewNamesTheRunnerAndSaysWhenItIsGone(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	ctx := ctxT(t)
	other, err := broker.Open(ctx, broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	release := tb.fake.Hold("tiny-a")
	defer release()
	tb.startOn(t, other, worker.Config{TargetName: "studio"})
	ours, err := worker.New(worker.Config{Store: tb.b.Store, Target: tb.target, TargetName: "mini", Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	running := tb.chat(t, "tiny-a", 1)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	v := tb.viewOnceStarted(t, ours, running.ID)
	if len(v.Elsewhere) != 1 || v.Elsewhere[0].Runner != "studio" || v.Elsewhere[0].RunnerGone {
		t.Fatalf("running elsewhere %+v, want %s on studio, its foreman there", v.Elsewhere, running.ID)
	}
	rec, _, err := tb.b.Store.Get(ctx, running.ID)
	if err != nil {
		t.Fatal(err)
	}
	if name, boot := rec.CurrentRunner(); name != "studio" || boot != other.BootID() || rec.RunnerAttempt != 1 {
		t.Errorf("record's runner %q (boot %q, attempt %d), want studio (boot %q, attempt 1)", name, boot, rec.RunnerAttempt, other.BootID())
	}
	if tb.b.Store.RunnerGone(ctx, rec) {
		t.Error("the runner of a job whose foreman is present is gone")
	}

	// The other foreman's presence goes, as at its death once its heartbeats lapse.
	gone, cancel := context.WithCancel(ctx)
	cancel()
	if err := other.Announce(gone); err != nil {
		t.Fatal(err)
	}
	if !tb.b.Store.RunnerGone(ctx, rec) {
		t.Error("the runner of a job whose foreman's presence is gone is not gone")
	}
	if v, err = ours.QueueView(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if len(v.Elsewhere) != 1 || v.Elsewhere[0].Runner != "studio" || !v.Elsewhere[0].RunnerGone {
		t.Errorf("running elsewhere %+v once studio's foreman is gone, want %s marked runner_gone", v.Elsewhere, running.ID)
	}
}

// A view that took longer than viewMaxAge (a quarter second) to compute is served for as
// long as it took, not computed again by the next caller: with a deep queue every
// GET /queue and GET /jobs/{id} computed its own view, one after the other.
func TestQueueViewSlowToComputeIsReused(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	var (
		mu       sync.Mutex
		now      = time.Now()
		computed int
		slow     = 400 * time.Millisecond
	)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	advance := func(d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(d)
	}
	cfg := worker.WithViewClock(worker.Config{}, clock)
	cfg = worker.WithViewAfterHeads(cfg, func() {
		computed++
		advance(slow) // the computation takes 0.4 s (10 s later on)
	})
	w := tb.start(t, cfg)
	first, err := w.QueueView(ctxT(t), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	again, err := w.QueueView(ctxT(t), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if again != first || computed != 1 {
		t.Fatalf("a view asked for just after one that took 0.4 s was computed again (%d computations)", computed)
	}
	advance(300 * time.Millisecond) // past a quarter second, within the 0.4 s it took
	if again, _ = w.QueueView(ctxT(t), time.Time{}); again != first {
		t.Fatal("the view was computed again before as long as it took had passed")
	}
	advance(101 * time.Millisecond)
	later, err := w.QueueView(ctxT(t), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if later == first || computed != 2 {
		t.Fatalf("the view was not computed again once as long as it took had passed (%d computations)", computed)
	}
	// One that took 10 s (a store slow to answer) is served 2 s at most.
	slow = 10 * time.Second
	advance(time.Hour)
	stale, err := w.QueueView(ctxT(t), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	advance(2 * time.Second)
	if again, _ = w.QueueView(ctxT(t), time.Time{}); again == stale || computed != 4 {
		t.Fatalf("a view that took 10 s was served for longer than 2 s (%d computations)", computed)
	}
}
