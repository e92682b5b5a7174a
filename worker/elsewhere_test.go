package worker_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// tinyC is a model only the first Mac of these tests has.
var tinyC = ollamatest.Model{Name: "tiny-c:latest"}

// startedOn counts the inference calls fake received for model (normalized).
func startedOn(fake *ollamatest.Server, model string) int {
	n := 0
	for _, c := range fake.Calls() {
		if c.Model == model {
			n++
		}
	}
	return n
}

// queueKeyOf is the queue (key) job j waits on.
func queueKeyOf(t *testing.T, j *broker.Job, body string) string {
	t.Helper()
	k, err := broker.KeyOf(j, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return k.String()
}

// With two Macs on one NATS, a job whose answer one Mac's runner stopped (its Ollama
// answering all else) is given up there and goes to the other Mac, which has its model:
// the hung Mac does not take it back, though it is idle and the job is there to take
// while the other Mac is still busy (ADR-0066).
func TestJobGivenUpForAStallRunsOnAnotherMac(t *testing.T) {
	t.Parallel()
	tb := setupFake(t, []ollamatest.Option{ollamatest.WithModels(ollamatest.Model{Name: "tiny-a:latest"}, tinyC)})
	macA := tb.fake
	// Mac A's runner hangs in every chat after a few frames; its other routes answer.
	macA.FailNextOn("/api/chat", 10, ollamatest.StallMidStream)
	releaseK := macA.Hold("tiny-c")
	defer releaseK()

	macB := ollamatest.New(t) // tiny-a and tiny-b
	releaseG := macB.Hold("tiny-b")
	defer releaseG()
	targetB, err := ollama.NewClient(ollama.ClientConfig{BaseURL: macB.URL, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	storeB, err := broker.Open(ctxT(t), broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	// Mac B is busy first with a job only it runs.
	tb.startOn(t, storeB, worker.Config{Target: targetB, IdlePoll: 20 * time.Millisecond})
	g := tb.chat(t, "tiny-b", 0)
	if err := macB.WaitStarted(waitCtx(t), "tiny-b", 1); err != nil {
		t.Fatal(err)
	}

	idle := make(chan struct{}, 1)
	cfgA := worker.WithOnIdle(worker.Config{
		StreamIdleTimeout: testIdle, MaxWait: time.Hour,
		// No Runs: Mac B has taken its tiny-b job already, and none other comes.
		// Mac B's entry: live, reachable, with tiny-a.
		Elsewhere: func(_ context.Context, model string) bool { return model == "tiny-a:latest" },
	}, func(time.Duration) {
		select {
		case idle <- struct{}{}:
		default:
		}
	})
	tb.start(t, cfgA)
	body := chatBody("tiny-a", 1)
	j := tb.submit(t, "tiny-a", broker.KindChat, body)
	if err := macA.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	// A job only Mac A runs keeps it busy while the given-up one is looked at.
	k := tb.submit(t, "tiny-c", broker.KindGenerate, `{"model":"tiny-c","prompt":"hold"}`)
	if got := tb.waitState(t, j.ID, broker.StateRetrying); got.Attempt != 1 {
		t.Fatalf("retrying after attempt %d, want 1 (%s)", got.Attempt, got.Error)
	}
	if err := macA.WaitStarted(waitCtx(t), "tiny-c", 1); err != nil {
		t.Fatal(err)
	}
	if n := startedOn(macA, "tiny-a:latest"); n != 1 {
		t.Fatalf("the hung Mac was called %d times for the job, want once: it took the job back", n)
	}
	// The job is there to take (its back-off over), and at once again: a third party
	// takes it from the queue and hands it straight back.
	probe, err := broker.Open(ctxT(t), broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	d, err := probe.NextWait(ctxT(t), queueKeyOf(t, j, body), 20*time.Second)
	if err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("the given-up job's message: %+v, %v; want it back in the queue", d, err)
	}
	if err := d.Msg.Nak(); err != nil {
		t.Fatal(err)
	}
	select { // drained: Mac A is in K's call, and idles only after it
	case <-idle:
	default:
	}
	releaseK()
	tb.waitState(t, k.ID, broker.StateDone)
	select {
	case <-idle: // Mac A looked at the queue after K and took nothing
	case <-waitCtx(t).Done():
		t.Fatal("Mac A never idled after its job")
	}
	if n := startedOn(macA, "tiny-a:latest"); n != 1 {
		t.Fatalf("the hung Mac was called %d times for the job, want once: it took the job back", n)
	}

	releaseG()
	tb.waitState(t, g.ID, broker.StateDone)
	got := tb.waitState(t, j.ID, broker.StateDone)
	if got.Attempt != 2 || got.Runner != "" && got.RunnerBoot != storeB.BootID() {
		t.Errorf("done after attempt %d run by boot %q; want attempt 2 on Mac B (%s)", got.Attempt, got.RunnerBoot, storeB.BootID())
	}
	if n := startedOn(macB, "tiny-a:latest"); n != 1 {
		t.Errorf("Mac B was called %d times for the job, want once", n)
	}
	if n := startedOn(macA, "tiny-a:latest"); n != 1 {
		t.Errorf("the hung Mac was called %d times for the job, want once", n)
	}
}

// A job left to another Mac is taken back once no other Mac offers its model: the hold
// lasts only while one does.
func TestJobLeftElsewhereRunsHereOnceNoOtherMacOffersIt(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNextOn("/api/chat", 1, ollamatest.StallMidStream)
	var offered atomic.Bool
	offered.Store(true)
	// Each answer of Elsewhere, in order: the first is the give-up's (holdOff), which
	// must have found another Mac for the hold to stand at all; only then does the other
	// Mac go. Flipped earlier, nothing would be held and the test could not fail.
	asked := make(chan bool, 1)
	tb.start(t, worker.Config{StreamIdleTimeout: testIdle, MaxWait: time.Hour, IdlePoll: 20 * time.Millisecond,
		Elsewhere: func(context.Context, string) bool {
			v := offered.Load()
			select {
			case asked <- v:
			default:
			}
			return v
		}})
	j := tb.chat(t, "tiny-a", 1)
	select {
	case v := <-asked:
		if !v {
			t.Fatal("the give-up found no other Mac offering the model")
		}
	case <-waitCtx(t).Done():
		t.Fatal("the give-up never asked whether another Mac offers the model")
	}
	offered.Store(false)
	if got := tb.waitState(t, j.ID, broker.StateDone); got.Attempt != 2 {
		t.Errorf("done after attempt %d, want 2", got.Attempt)
	}
}

// A pick that asks whether another Mac still offers a held job's model waits a bounded
// time for the answer (a sick cluster's targets and presence reads can take tens of
// seconds): no answer counts as no, and the job runs here.
func TestHeldJobRunsHereWhenNoOtherMacAnswers(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNextOn("/api/chat", 1, ollamatest.StallMidStream)
	var asks atomic.Int32
	over := make(chan struct{}) // the test's end: a worker that waits unbounded can stop
	tb.start(t, worker.Config{StreamIdleTimeout: testIdle, MaxWait: time.Hour, IdlePoll: 20 * time.Millisecond,
		Elsewhere: func(ctx context.Context, _ string) bool {
			if asks.Add(1) == 1 {
				return true // the give-up's ask: another Mac offers the model
			}
			select { // then the targets go unanswered
			case <-ctx.Done():
			case <-over:
			}
			return true
		}})
	t.Cleanup(func() { close(over) }) // before the worker's stop, registered earlier
	j := tb.chat(t, "tiny-a", 1)
	if got := tb.waitState(t, j.ID, broker.StateDone); got.Attempt != 2 {
		t.Errorf("done after attempt %d, want 2", got.Attempt)
	}
	if n := asks.Load(); n < 2 {
		t.Errorf("Elsewhere asked %d times, want the give-up's ask and a pick's", n)
	}
}

// The queue view tells a job left to another Mac (ADR-0066) from one this worker runs
// next: the job given up here for a stall, and the job behind it in its queue, say
// left_elsewhere and are expected here only once the hold has run out (FOREMAN_MAX_WAIT
// after the give-up), after the jobs the worker does run meanwhile; before, they were
// shown as the worker's next runs.
func TestQueueViewShowsAJobLeftToAnotherMac(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNextOn("/api/chat", 1, ollamatest.StallMidStream)
	releaseB := tb.fake.Hold("tiny-b")
	defer releaseB()
	const maxWait = time.Hour
	w := tb.start(t, worker.Config{StreamIdleTimeout: testIdle, MaxWait: maxWait, IdlePoll: 20 * time.Millisecond,
		// Another Mac, live and reachable, has tiny-a.
		Elsewhere: func(_ context.Context, model string) bool { return model == "tiny-a:latest" }})
	gaveUp := time.Now()
	j := tb.chat(t, "tiny-a", 1)
	if got := tb.waitState(t, j.ID, broker.StateRetrying); got.Attempt != 1 {
		t.Fatalf("retrying after attempt %d, want 1 (%s)", got.Attempt, got.Error)
	}
	k := tb.chat(t, "tiny-a", 2) // behind j in its queue
	// The worker runs a tiny-b job (held in its call) and has another one waiting.
	b0 := tb.submit(t, "tiny-b", broker.KindGenerate, `{"model":"tiny-b","prompt":"first"}`)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-b", 1); err != nil {
		t.Fatal(err)
	}
	b1 := tb.submit(t, "tiny-b", broker.KindGenerate, `{"model":"tiny-b","prompt":"second"}`)
	if n := startedOn(tb.fake, "tiny-a:latest"); n != 1 {
		t.Fatalf("the job was called %d times, want once: the worker took it back", n)
	}

	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if v.Running != b0.ID {
		t.Fatalf("view runs %q, want the first tiny-b job %s", v.Running, b0.ID)
	}
	holdEnd := gaveUp.Add(maxWait)
	byID := map[string]broker.QueuedJob{}
	for _, q := range v.Queued {
		byID[q.JobID] = q
	}
	if len(v.Queued) != 3 {
		t.Fatalf("view queues %+v, want b1, j and k", v.Queued)
	}
	if q := v.Queued[0]; q.JobID != b1.ID || q.LeftElsewhere || !q.ETA.Before(holdEnd) {
		t.Errorf("first waiting %+v: want %s, run here before the hold ends (%v)", q, b1.ID, holdEnd)
	}
	for _, id := range []string{j.ID, k.ID} {
		q, ok := byID[id]
		if !ok {
			t.Fatalf("job %s not in the view's queue: %+v", id, v.Queued)
		}
		if !q.LeftElsewhere || q.QueuePosition < 2 || q.ETA.Before(holdEnd) {
			t.Errorf("job %s in the view: position %d, eta %v, left_elsewhere %v; want left to another Mac, after %s, not before the hold ends (%v)",
				id, q.QueuePosition, q.ETA, q.LeftElsewhere, b1.ID, holdEnd)
		}
	}
	if q := byID[j.ID]; q.State != broker.StateRetrying || q.Attempts != 1 {
		t.Errorf("job %s in the view: state %q attempts %d, want retrying after attempt 1", j.ID, q.State, q.Attempts)
	}
}

// A job this Mac left to another (ADR-0066) that the other Mac took and gave back without
// counting its attempt (Ollama there answered "not now", ADR-0086, or refused the
// connection, ADR-0089) is no longer held here: its record's attempt is back at the one
// given up here, but a later attempt was begun elsewhere. Before, the hold stood until
// FOREMAN_MAX_WAIT, and this Mac took no job of that queue meanwhile.
func TestJobTakenElsewhereAndGivenBackIsNotHeld(t *testing.T) {
	t.Parallel()
	tb := setupFake(t, []ollamatest.Option{ollamatest.WithModels(ollamatest.Model{Name: "tiny-a:latest"}, tinyC)})
	tb.fake.FailNextOn("/api/chat", 1, ollamatest.StallMidStream)
	releaseK := tb.fake.Hold("tiny-c")
	defer releaseK()
	tb.start(t, worker.Config{StreamIdleTimeout: testIdle, MaxWait: time.Hour, IdlePoll: 20 * time.Millisecond,
		Elsewhere: func(_ context.Context, model string) bool { return model == "tiny-a:latest" }})
	body := chatBody("tiny-a", 1)
	j := tb.submit(t, "tiny-a", broker.KindChat, body)
	if got := tb.waitState(t, j.ID, broker.StateRetrying); got.Attempt != 1 || got.RunnerAttempt != 1 {
		t.Fatalf("retrying after attempt %d (runner's %d), want 1 (%s)", got.Attempt, got.RunnerAttempt, got.Error)
	}
	// This Mac is kept busy with a job only it runs while the other Mac takes the job.
	k := tb.submit(t, "tiny-c", broker.KindGenerate, `{"model":"tiny-c","prompt":"hold"}`)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-c", 1); err != nil {
		t.Fatal(err)
	}
	// The other Mac: takes the job's message, begins attempt 2, and gives it back
	// uncounted, its record as the worker there leaves it.
	macB, err := broker.Open(ctxT(t), broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	d, err := macB.NextWait(ctxT(t), queueKeyOf(t, j, body), 20*time.Second)
	if err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("the given-up job's message: %+v, %v; want it back in the queue", d, err)
	}
	_, rev, err := macB.Get(ctxT(t), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := macB.Update(ctxT(t), j.ID, rev, func(rec *broker.Job) error {
		rec.RunnerAttempt, rec.Runner, rec.RunnerBoot = rec.Attempt+1, "mac-b", macB.BootID()
		rec.Error = "ollama: HTTP 503: server busy, please try again.  maximum pending requests exceeded"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := d.Msg.Nak(); err != nil {
		t.Fatal(err)
	}

	releaseK()
	tb.waitState(t, k.ID, broker.StateDone)
	if got := tb.waitState(t, j.ID, broker.StateDone); got.Attempt != 2 || got.RunnerBoot != tb.b.Store.BootID() {
		t.Errorf("done after attempt %d run by boot %q; want attempt 2 here (%s)", got.Attempt, got.RunnerBoot, tb.b.Store.BootID())
	}
}
