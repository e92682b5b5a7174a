package worker_test

import (
	"sync"
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
