package worker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

func exclusiveStore(c *broker.Config) { c.Exclusive = true }

// syncJob queues a sync job as the gateway of boot id gateway would.
func (tb *testBundle) syncJob(t *testing.T, model, gateway string) *broker.Job {
	t.Helper()
	j, err := tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: model, Kind: broker.KindChat, Sync: true, Gateway: gateway}, []byte(chatBody(model, 0)))
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return j
}

func callsOf(tb *testBundle, model string) int {
	n := 0
	for _, m := range inferenceCalls(tb.fake) {
		if m == model+":latest" || m == model {
			n++
		}
	}
	return n
}

// A sync job picked after its foreman died ends canceled without reaching the target;
// async jobs queued with it run, and so do the sync jobs of the running foreman.
func TestSyncJobOfDeadCallerCanceledAtPick(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(exclusiveStore))
	release := tb.fake.Hold("tiny-a")
	first := tb.chat(t, "tiny-a", 1)
	tb.start(t, worker.Config{})
	// The worker is past its start sweep once it runs a job: what comes now meets the
	// check at pick time.
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	dead := tb.syncJob(t, "tiny-b", broker.NewID())
	deadStates := watchStates(t, tb.b.Conn, dead.ID)
	async := tb.chat(t, "tiny-a", 2)
	live := tb.syncJob(t, "tiny-a", tb.b.Store.BootID())
	release()

	tb.waitState(t, first.ID, broker.StateDone)
	tb.waitState(t, async.ID, broker.StateDone)
	tb.waitState(t, live.ID, broker.StateDone)
	got := tb.waitState(t, dead.ID, broker.StateCanceled)
	if got.Error != broker.CallerGoneReason || got.Attempt != 0 || got.StartedAt != nil {
		t.Errorf("dead caller's job: error %q attempt %d started %v; want %q, never started", got.Error, got.Attempt, got.StartedAt, broker.CallerGoneReason)
	}
	if seen := deadStates.until(t); len(seen) != 1 || seen[0] != broker.StateCanceled {
		t.Errorf("dead caller's job went through %v, want only canceled", seen)
	}
	if n := callsOf(tb, "tiny-b"); n != 0 {
		t.Errorf("the target got %d calls for the dead caller's job, want 0", n)
	}
	tb.waitQueueEmpty(t)
}

// The start sweep cancels the sync jobs of dead callers before the worker picks anything:
// they do not wait in the queue behind a long job.
func TestStartSweepCancelsDeadCallersBeforeTheFirstJob(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(exclusiveStore))
	release := tb.fake.Hold("tiny-a")
	defer release()
	async := tb.chat(t, "tiny-a", 1)
	dead := tb.syncJob(t, "tiny-a", broker.NewID())
	tb.start(t, worker.Config{})
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	// The sweep ran before the first pick, and the worker is held on the async job: only
	// the sweep can have ended the sync job.
	j, _, err := tb.b.Store.Get(ctxT(t), dead.ID)
	if err != nil || j.State != broker.StateCanceled || j.Error != broker.CallerGoneReason {
		t.Fatalf("dead caller's sync job while the first job runs: %+v %v; want canceled (%s)", j, err, broker.CallerGoneReason)
	}
	if n, err := tb.b.Store.QueueLen(ctxT(t)); err != nil || n != 1 {
		t.Errorf("queue holds %d (%v), want 1 (the running async job)", n, err)
	}
	release()
	tb.waitState(t, async.ID, broker.StateDone)
	if n := len(inferenceCalls(tb.fake)); n != 1 {
		t.Errorf("%d inference calls, want 1", n)
	}
}

// After a crash with the embedded server, the job that was running runs again as soon as
// the worker starts, not after AckWait, and before the job queued behind it.
func TestInterruptedJobRerunsAtOnceOnAnExclusiveStore(t *testing.T) {
	t.Parallel()
	tb := setupExclusive(t)
	j := tb.chat(t, "tiny-a", 1)
	behind := tb.submit(t, "tiny-b", broker.KindChat, chatBody("tiny-b", 2))

	// A foreman takes the job and starts it, then dies: the delivery is never acked.
	tb.cutShort(t, j, killedMidRun)
	tb.b.Restart(t)

	tb.start(t, worker.Config{})
	// waitState's deadline (30s) is far below AckWait (10m): waiting out AckWait fails here.
	got := tb.waitState(t, j.ID, broker.StateDone)
	if got.Attempt != 2 {
		t.Errorf("attempt %d, want 2", got.Attempt)
	}
	tb.waitState(t, behind.ID, broker.StateDone)
	if calls := inferenceCalls(tb.fake); len(calls) != 2 || calls[0] != "tiny-a:latest" {
		t.Errorf("calls %v, want the interrupted tiny-a job first, then tiny-b", calls)
	}
}

// On a shared NATS the worker runs the sync jobs of foremen that are present and cancels
// those of foremen that are not: here one that stopped in order (withdrew its presence),
// whose job is fresh. (One whose presence lapsed keeps a job it published less than a
// PresenceTTL ago: broker.Store.CallerGoneAt.)
func TestSharedStoreRunsPresentForemenSyncJobsOnly(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	ctx := ctxT(t)
	other, err := broker.Open(ctx, broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	stopped, err := broker.Open(ctx, broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	withdrawn, withdraw := context.WithCancel(ctx)
	withdraw()
	_ = stopped.Announce(withdrawn) // a stop in order: the presence is withdrawn
	release := tb.fake.Hold("tiny-a")
	first := tb.chat(t, "tiny-a", 1)
	tb.start(t, worker.Config{})
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	gone := tb.syncJob(t, "tiny-b", stopped.BootID())
	present := tb.syncJob(t, "tiny-a", other.BootID())
	release()

	tb.waitState(t, first.ID, broker.StateDone)
	tb.waitState(t, present.ID, broker.StateDone)
	if got := tb.waitState(t, gone.ID, broker.StateCanceled); got.Error != broker.CallerGoneReason {
		t.Errorf("absent foreman's sync job: %q, want %q", got.Error, broker.CallerGoneReason)
	}
	if n := callsOf(tb, "tiny-b"); n != 0 {
		t.Errorf("the target got %d calls for the absent foreman's job, want 0", n)
	}
}

// On a shared NATS a sync job that a stopping foreman hands back, its caller waiting on
// that foreman, goes to no other foreman while the stopping one is still present (it
// would run for nobody): the stopping one's shutdown cancels it meanwhile, and the target
// is called for it once.
func TestStoppingForemansSyncJobGoesToNoOtherForeman(t *testing.T) {
	t.Parallel()
	presence := func(c *broker.Config) { c.PresenceTTL = 2 * time.Second }
	tb := setup(t, brokertest.WithStore(presence))
	ctx := ctxT(t)
	actx, stopAnnounce := context.WithCancel(ctx)
	announced := make(chan error, 1)
	go func() { announced <- tb.b.Store.Announce(actx) }()
	t.Cleanup(func() { stopAnnounce(); <-announced })
	otherCfg := broker.Config{Conn: tb.b.Conn}
	presence(&otherCfg)
	other, err := broker.Open(ctx, otherCfg)
	if err != nil {
		t.Fatal(err)
	}

	release := tb.fake.Hold("tiny-a")
	defer release()
	w := tb.start(t, worker.Config{})
	j := tb.syncJob(t, "tiny-a", tb.b.Store.BootID())
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	// Idle (the only job runs on the first foreman), looking for work every 50 ms.
	tb.startOn(t, other, worker.Config{IdlePoll: 50 * time.Millisecond})

	// The first foreman stops: its call is cut off and the job handed back; then its
	// shutdown cancels the job whose caller it answers 503 (Gateway.AnswerWaiting).
	sctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_ = w.Stop(sctx)
	cancel()
	release()
	// The other foreman would take a job handed back at once within its next look.
	wctx, wcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	ranAgain := tb.fake.WaitStarted(wctx, "tiny-a", 2) == nil
	wcancel()
	if ranAgain {
		t.Error("another foreman ran the job while the foreman its caller waits on was present")
	}
	if _, err := tb.b.Store.Cancel(ctx, j.ID, "foreman shutting down"); err != nil && !errors.Is(err, broker.ErrTerminal) {
		t.Fatal(err)
	}
	tb.waitQueueEmpty(t)
	if n := callsOf(tb, "tiny-a"); n != 1 {
		t.Errorf("the target was called %d times for the job, want once (no other foreman ran it)", n)
	}
	if got := tb.waitState(t, j.ID, broker.StateCanceled); got.Attempt > 1 {
		t.Errorf("job ended after %d attempts, want its first only", got.Attempt)
	}
}

// On a shared NATS a sync job whose caller waits on another foreman, cut off mid-answer
// by this foreman's stop, ends failed: its caller has part of the answer, into which
// another run could not be spliced (its frames would start again), so a run elsewhere
// would be for nobody.
func TestStopMidAnswerFailsAnotherForemansSyncJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	ctx := ctxT(t)
	other, err := broker.Open(ctx, broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	actx, stopAnnounce := context.WithCancel(ctx)
	announced := make(chan error, 1)
	go func() { announced <- other.Announce(actx) }()
	t.Cleanup(func() { stopAnnounce(); <-announced })

	tb.fake.FailNextOn("/api/chat", 1, ollamatest.StallMidStream) // frames, then nothing
	w := tb.start(t, worker.Config{})
	j := tb.syncJob(t, "tiny-a", other.BootID())
	tb.waitState(t, j.ID, broker.StateWorking) // its first frame went out
	expired, cancel := context.WithCancel(ctx)
	cancel()
	if err := w.Stop(expired); err != nil {
		t.Fatal(err)
	}
	got := tb.waitState(t, j.ID, broker.StateFailed)
	if got.Error != "foreman shutting down" {
		t.Errorf("failed with %q, want the stop named", got.Error)
	}
	tb.waitQueueEmpty(t)
	if n := callsOf(tb, "tiny-a"); n != 1 {
		t.Errorf("the target was called %d times for the job, want once", n)
	}
}
