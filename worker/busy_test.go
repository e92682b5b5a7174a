package worker_test

import (
	"fmt"
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

// A target that answers "not now" (503: Ollama's own queue is full, as other clients use
// it too; 429 from a proxy in front of it) gets the job again after the back-off, and the
// job ends done on its next attempt instead of failing for good. The attempt answered
// "not now" is not counted (ADR-0086).
func TestBusyTargetIsRetried(t *testing.T) {
	t.Parallel()
	for _, code := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			t.Parallel()
			tb := setup(t)
			tb.fake.FailNext(1, ollamatest.FailStatus(code, "server busy, please try again.  maximum pending requests exceeded"))
			j := tb.chat(t, "tiny-a", 1)
			tb.start(t, worker.Config{})
			got := tb.waitState(t, j.ID, broker.StateDone)
			if got.Attempt != 1 {
				t.Errorf("done at attempt %d, want 1: the busy answer is not counted", got.Attempt)
			}
			if n := len(inferenceCalls(tb.fake)); n != 2 {
				t.Errorf("target called %d times, want 2", n)
			}
		})
	}
}

// Ollama answering "not now" is the target's state, not the jobs': while it lasts the
// worker waits, and the queue behind the job it tried does not spend its attempts on the
// same answer. Before, each queued job was tried in turn, every one spent its attempts
// within the back-off's first seconds, and a busy spell of a few seconds failed the whole
// backlog.
func TestBusyTargetDoesNotFailTheQueue(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 2 }))
	var jobs []*broker.Job
	for i := range 3 {
		jobs = append(jobs, tb.chat(t, "tiny-a", i))
	}
	// Six busy answers: two for each job, its every attempt, were they spent on them.
	tb.fake.FailNext(6, ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded"))
	tb.start(t, worker.Config{})
	for _, j := range jobs {
		got := tb.waitEnded(t, j.ID)
		if got.State != broker.StateDone {
			t.Errorf("job %s ended %s (%s), want done", j.ID, got.State, got.Error)
		}
	}
	if n := len(inferenceCalls(tb.fake)); n != 6+len(jobs) {
		t.Errorf("target called %d times, want %d", n, 6+len(jobs))
	}
}

// While the target answers "not now" the worker waits out the back-off as a pause the
// queue view shows (target_busy), and calls it for no other job meanwhile; a stop ends
// the wait (the test's cleanup stops the worker mid-wait of an hour).
func TestBusyTargetPausesTheWorker(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNext(1, ollamatest.FailStatus(http.StatusTooManyRequests, "slow down"))
	first := tb.chat(t, "tiny-a", 1)
	next := tb.chat(t, "tiny-a", 2)
	w := tb.start(t, worker.Config{RetryDelay: time.Hour})
	eventually(t, 10*time.Second, "the worker paused for the busy target", func() bool {
		p := w.PauseShown()
		return p != nil && p.Reason == broker.PauseTargetBusy && strings.Contains(p.Error, "slow down")
	})
	if n := len(inferenceCalls(tb.fake)); n != 1 {
		t.Errorf("%d calls during the pause, want the busy one only", n)
	}
	for _, j := range []*broker.Job{first, next} {
		if got := record(t, tb, j.ID); got.Attempt != 0 || got.State.Terminal() {
			t.Errorf("job %s: %s after %d attempts, want waiting with none spent", j.ID, got.State, got.Attempt)
		}
	}
}

// A job the target keeps answering "not now" reaches JetStream's last delivery (the
// consumers' MaxDeliver, here 3) without spending an attempt: it is put back as a new
// message, whose deliveries count anew, not left undelivered or failed.
func TestBusyTargetOutlastsTheDeliveries(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 1 }))
	tb.fake.FailNext(4, ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded"))
	j := tb.chat(t, "tiny-a", 1)
	tb.start(t, worker.Config{RetryDelay: time.Millisecond})
	got := tb.waitEnded(t, j.ID)
	if got.State != broker.StateDone || got.Attempt != 1 {
		t.Errorf("job ended %s (%s) at attempt %d, want done at 1", got.State, got.Error, got.Attempt)
	}
	if n := len(inferenceCalls(tb.fake)); n != 5 {
		t.Errorf("target called %d times, want 5", n)
	}
}

// Busy answers spend JetStream deliveries without spending attempts: a job whose
// deliveries were used up by them, whose attempt on its last delivery then fails in a
// way that counts (a connection dropped), has attempts left, and is not failed
// "attempts exhausted" at its first counted attempt.
func TestBusyDeliveriesDoNotExhaustALaterAttempt(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 3 })) // MaxDeliver 5
	tb.fake.FailNext(4, ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded"))
	tb.fake.FailNext(1, ollamatest.DropConnection)
	j := tb.chat(t, "tiny-a", 1)
	tb.start(t, worker.Config{RetryDelay: time.Millisecond})
	got := tb.waitEnded(t, j.ID)
	if got.State != broker.StateDone || got.Attempt != 2 {
		t.Errorf("job ended %s (%s) at attempt %d, want done at 2", got.State, got.Error, got.Attempt)
	}
	if n := len(inferenceCalls(tb.fake)); n != 6 {
		t.Errorf("target called %d times, want 6", n)
	}
}

// A sync job answered after busy answers ends before its start is stored (ADR-0038),
// not through the attempt's usual end: that answer too starts the busy wait over, or
// the next "not now", however long after, would be waited out as the busy spell's next.
func TestASyncAnswerEndsTheBusySpell(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 3 }))
	tb.fake.FailNext(2, ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded"))
	j, err := tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true}, []byte(chatBody("tiny-a", 1)))
	if err != nil {
		t.Fatal(err)
	}
	w := tb.start(t, worker.Config{RetryDelay: time.Millisecond})
	if got := tb.waitEnded(t, j.ID); got.State != broker.StateDone || got.Attempt != 3 {
		t.Fatalf("sync job ended %s (%s) at attempt %d, want done at 3", got.State, got.Error, got.Attempt)
	}
	eventually(t, 5*time.Second, "the busy answers in a row forgotten after the answer", func() bool {
		return worker.BusyInRow(w) == 0
	})
}

// The queue view names the attempt that failed only when it was counted: a job whose
// attempt 1 failed (a connection dropped) and whose next was answered "not now" shows
// the busy answer with no attempt, not as "attempt 1 failed: HTTP 503".
func TestQueueViewNamesNoAttemptForABusyAnswer(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 3 }))
	tb.fake.FailNext(1, ollamatest.DropConnection)
	tb.fake.FailNext(1000, ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded"))
	j := tb.chat(t, "tiny-a", 1)
	w := tb.start(t, worker.Config{})
	var q broker.QueuedJob
	eventually(t, 10*time.Second, "the job shown retrying after a busy answer", func() bool {
		v, err := w.QueueView(ctxT(t), time.Now())
		if err != nil || len(v.Queued) != 1 {
			return false
		}
		q = v.Queued[0]
		return q.JobID == j.ID && q.State == broker.StateRetrying && strings.Contains(q.Error, "HTTP 503")
	})
	if q.Attempts != 0 {
		t.Errorf("shown as attempt %d failed with %q; want no attempt named", q.Attempts, q.Error)
	}
	if got := record(t, tb, j.ID); got.Attempt != 1 {
		t.Errorf("record at attempt %d, want 1: the dropped connection counted, the busy answers not", got.Attempt)
	}
}

// The retrying write that gives a busy answer's attempt back is tried again while the
// store refuses it for now: once lost, the attempt stayed counted, and the job, at
// FOREMAN_MAX_ATTEMPTS=1 here, failed "attempts exhausted" at its next delivery though
// the target only ever said "not now".
func TestBusyAttemptIsGivenBackThroughAStoreHiccup(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 1 }))
	tb.fake.FailNext(1, ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded"))
	var faults atomic.Int32
	tb.start(t, worker.WithRetryingFault(worker.Config{RetryDelay: time.Millisecond}, func(string) error {
		if faults.Add(1) > 2 {
			return nil
		}
		return fmt.Errorf("injected: %w", broker.ErrUnavailable)
	}))
	j := tb.chat(t, "tiny-a", 1)
	got := tb.waitEnded(t, j.ID)
	if got.State != broker.StateDone || got.Attempt != 1 {
		t.Errorf("job ended %s (%s) at attempt %d, want done at 1", got.State, got.Error, got.Attempt)
	}
	if n := faults.Load(); n != 3 {
		t.Errorf("%d tries of the retrying write, want 3 (two refused)", n)
	}
}
