package worker_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// idleWatch tells when the loop of a worker begins to wait for a wake-up.
type idleWatch struct {
	mu    sync.Mutex
	n     int
	waits chan struct{} // closed and replaced at each idle
}

func newIdleWatch() *idleWatch { return &idleWatch{waits: make(chan struct{})} }

func (iw *idleWatch) idle(time.Duration) {
	iw.mu.Lock()
	defer iw.mu.Unlock()
	iw.n++
	close(iw.waits)
	iw.waits = make(chan struct{})
}

// next returns a channel closed at the next idle.
func (iw *idleWatch) next() <-chan struct{} {
	iw.mu.Lock()
	defer iw.mu.Unlock()
	return iw.waits
}

// afterFetch is the loop's first idle after job id's fetch: the idle after the job's run.
type afterFetch struct {
	id      string
	iw      *idleWatch
	once    sync.Once
	fetched chan struct{}
	idle    <-chan struct{} // set before fetched is closed
}

func (iw *idleWatch) afterFetchOf(id string) *afterFetch {
	return &afterFetch{id: id, iw: iw, fetched: make(chan struct{})}
}

// trace is a Config.Trace that notes the job's fetch.
func (a *afterFetch) trace(id, stage string) {
	if id == a.id && stage == worker.StageFetched {
		a.once.Do(func() {
			a.idle = a.iw.next() // the loop's next idle is the one after the job
			close(a.fetched)
		})
	}
}

// hold waits, in a BeforeStoreDone hook, for the idle after the job, so that the look
// after it meets the job still finishing; ctx ends the wait.
func (a *afterFetch) hold(ctx context.Context) {
	select {
	case <-a.fetched:
	case <-ctx.Done():
		return
	}
	select {
	case <-a.idle:
	case <-ctx.Done():
	}
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-ctxT(t).Done():
		t.Fatalf("never %s", what)
	}
}

// On its own store (EarlyCall) a worker that found nothing waiting, and ran the job a
// publish woke it for, idles after that job without a look at the queue: nothing else was
// published meanwhile, and on its own store nothing else can become ready. Each look is a
// stream info request and three or four reads, and one followed every job that came to an
// idle worker (people at their desks, one chat at a time).
func TestAJobAtAnIdleWorkerIsNotFollowedByALook(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	iw := newIdleWatch()
	first := iw.next()
	tb.start(t, worker.WithOnIdle(worker.Config{EarlyCall: true, IdlePoll: time.Hour}, iw.idle))
	waitFor(t, first, "idle at the start")
	infos, err := tb.b.Conn.SubscribeSync("$JS.API.STREAM.INFO." + broker.QueueStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		idleAgain := iw.next()
		j := tb.chat(t, "tiny-a", i)
		if got := tb.waitEnded(t, j.ID); got.State != broker.StateDone {
			t.Fatalf("job %d ended %s (%s), want done", i, got.State, got.Error)
		}
		waitFor(t, idleAgain, "idle after the job")
	}
	if err := tb.b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := infos.Pending(); n != 0 {
		t.Errorf("%d looks at the queue after three jobs at an idle worker, want none", n)
	}
	tb.waitQueueEmpty(t)
}

// What may become ready without a publish still is: a job whose attempt failed (a dropped
// connection) waits out its back-off in its message and runs again, with IdlePoll an
// hour away; and a job published while another ran is looked for and run after it.
func TestAnIdleWorkerStillFindsARetryAndAJobQueuedMeanwhile(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNext(1, ollamatest.DropConnection)
	iw := newIdleWatch()
	first := iw.next()
	retried := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	var later *broker.Job
	queuedMeanwhile := make(chan struct{})
	var once sync.Once
	cfg := worker.WithOnIdle(worker.Config{EarlyCall: true, IdlePoll: time.Hour, RetryDelay: 20 * time.Millisecond}, iw.idle)
	tb.start(t, worker.WithBeforeStoreDone(cfg, func(id string) {
		// The retried job's end is stored once another job is queued.
		if id == retried.ID {
			once.Do(func() {
				later = tb.chat(t, "tiny-a", 2)
				close(queuedMeanwhile)
			})
		}
	}))
	waitFor(t, first, "idle at the start")
	if _, err := tb.b.Store.Submit(ctxT(t), retried, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	if got := tb.waitEnded(t, retried.ID); got.State != broker.StateDone || got.Attempt != 2 {
		t.Fatalf("job ended %s at attempt %d (%s), want done at attempt 2", got.State, got.Attempt, got.Error)
	}
	waitFor(t, queuedMeanwhile, "a job queued while the retried one ended")
	if got := tb.waitEnded(t, later.ID); got.State != broker.StateDone {
		t.Errorf("job queued meanwhile ended %s (%s), want done", got.State, got.Error)
	}
}

// A job whose end the store does not take (an error it will not retry) is put back with a
// retry's back-off (a NAK), in the background, mostly after the loop began its idle wait:
// with no look after the job, nothing else ever does. The wait, begun for IdlePoll (an
// hour here, a second in foreman serve), must end with that back-off, not at IdlePoll.
func TestAJobPutBackAfterTheLoopIdlesRunsAgainAfterItsBackOff(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	iw := newIdleWatch()
	first := iw.next()
	j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	after := iw.afterFetchOf(j.ID)
	var faultOnce sync.Once
	cfg := worker.Config{EarlyCall: true, IdlePoll: time.Hour, RetryDelay: 20 * time.Millisecond, Trace: after.trace}
	cfg = worker.WithOnIdle(cfg, iw.idle)
	cfg = worker.WithDoneFault(cfg, func(id string) error {
		var err error
		faultOnce.Do(func() { err = errors.New("test: the store takes no end of this job") })
		return err
	})
	ctx := ctxT(t)
	// The end fails once the loop waits again.
	tb.start(t, worker.WithBeforeStoreDone(cfg, func(string) { after.hold(ctx) }))
	waitFor(t, first, "idle at the start")
	if _, err := tb.b.Store.Submit(ctx, j, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	got, err := tb.watchUntil(j.ID, 10*time.Second, func(j *broker.Job) bool { return j.State.Terminal() })
	if err != nil {
		t.Fatalf("the job put back after its end failed never ran again: %v", err)
	}
	if got.State != broker.StateDone || got.Attempt != 2 {
		t.Errorf("job ended %s at attempt %d (%s), want done at attempt 2", got.State, got.Attempt, got.Error)
	}
}

// A job put back (its end not stored) while the next job was woken for and ran is ready
// again, with no publish, once its back-off ends. When that job ran longer than the
// back-off and its grace, the idle wait after it no longer waits for the back-off: the
// look after that job must be made, or the job put back waits for IdlePoll.
func TestAJobPutBackWhileTheNextRanIsLookedForAfterIt(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	iw := newIdleWatch()
	first := iw.next()
	j0 := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	j1 := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	const retryDelay = 20 * time.Millisecond
	releaseEnd, releaseJ1 := make(chan struct{}), make(chan struct{})
	faulted := make(chan time.Time, 1)
	j1Starts := make(chan struct{})
	var faultOnce, startOnce sync.Once
	cfg := worker.Config{EarlyCall: true, IdlePoll: time.Hour, RetryDelay: retryDelay}
	cfg = worker.WithOnIdle(cfg, iw.idle)
	cfg = worker.WithDoneFault(cfg, func(id string) error {
		var err error
		if id == j0.ID {
			faultOnce.Do(func() {
				err = errors.New("test: the store takes no end of this job")
				faulted <- time.Now()
			})
		}
		return err
	})
	ctx := ctxT(t)
	cfg = worker.WithBeforeStart(cfg, func(id string) {
		if id != j1.ID {
			return
		}
		startOnce.Do(func() { close(j1Starts) })
		select {
		case <-releaseJ1:
		case <-ctx.Done():
		}
	})
	tb.start(t, worker.WithBeforeStoreDone(cfg, func(id string) {
		if id != j0.ID {
			return
		}
		select {
		case <-releaseEnd:
		case <-ctx.Done():
		}
	}))
	waitFor(t, first, "idle at the start")
	idleAfterJ0 := iw.next()
	if _, err := tb.b.Store.Submit(ctx, j0, []byte(chatBody("tiny-a", 0))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, idleAfterJ0, "idle after the first job")
	if _, err := tb.b.Store.Submit(ctx, j1, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, j1Starts, "the second job's start")
	close(releaseEnd) // the first job's end fails: it goes back, for retryDelay
	var at time.Time
	select {
	case at = <-faulted:
	case <-ctx.Done():
		t.Fatal("the first job's end was never tried")
	}
	// The second job runs on past the first one's back-off and its grace (a second).
	select {
	case <-time.After(time.Until(at.Add(retryDelay + time.Second + 200*time.Millisecond))):
	case <-ctx.Done():
		t.Fatal("no time left")
	}
	close(releaseJ1)
	if got := tb.waitEnded(t, j1.ID); got.State != broker.StateDone {
		t.Fatalf("second job ended %s (%s), want done", got.State, got.Error)
	}
	got, err := tb.watchUntil(j0.ID, 10*time.Second, func(j *broker.Job) bool { return j.State.Terminal() })
	if err != nil {
		t.Fatalf("the job put back while the next ran never ran again: %v", err)
	}
	if got.State != broker.StateDone || got.Attempt != 2 {
		t.Errorf("job ended %s at attempt %d (%s), want done at attempt 2", got.State, got.Attempt, got.Error)
	}
}

// A job of a model the worker does not run now (Config.Runs) waits in the queue, and the
// look that found nothing else to run is no look that found nothing waiting: should the
// model become the worker's while the next job runs, the look after that job finds its
// job. Skipped, the job waited for IdlePoll.
func TestAJobOfAModelNotRunThenIsLookedForAfterTheNextJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	iw := newIdleWatch()
	first := iw.next()
	var runsB atomic.Bool
	j0 := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	after := iw.afterFetchOf(j0.ID)
	cfg := worker.Config{EarlyCall: true, IdlePoll: time.Hour,
		Runs:  func(_ context.Context, model string) bool { return !strings.HasPrefix(model, "tiny-b") || runsB.Load() },
		Trace: after.trace}
	cfg = worker.WithOnIdle(cfg, iw.idle)
	ctx := ctxT(t)
	jb := tb.chat(t, "tiny-b", 0) // queued before the start: no publish seen
	tb.start(t, worker.WithBeforeStoreDone(cfg, func(id string) {
		if id != j0.ID {
			return
		}
		after.hold(ctx) // the look after the first job still meets it queued
	}))
	waitFor(t, first, "idle at the start, with a job of a model it does not run queued")
	if _, err := tb.b.Store.Submit(ctx, j0, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	if got := tb.waitEnded(t, j0.ID); got.State != broker.StateDone {
		t.Fatalf("first job ended %s (%s), want done", got.State, got.Error)
	}
	waitFor(t, after.fetched, "the first job fetched")
	waitFor(t, after.idle, "idle after the first job")
	runsB.Store(true) // the model is the worker's now (pulled to its target, say)
	j1 := tb.chat(t, "tiny-a", 2)
	if got := tb.waitEnded(t, j1.ID); got.State != broker.StateDone {
		t.Fatalf("second job ended %s (%s), want done", got.State, got.Error)
	}
	got, err := tb.watchUntil(jb.ID, 10*time.Second, func(j *broker.Job) bool { return j.State.Terminal() })
	if err != nil {
		t.Fatalf("the job of the model run now was not run after the next job: %v", err)
	}
	if got.State != broker.StateDone {
		t.Errorf("job ended %s (%s), want done", got.State, got.Error)
	}
}
