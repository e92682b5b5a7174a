package worker_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// heldCalls holds every chat call in the fake until the test lets it go, one gate a call.
type heldCalls struct{ starts chan chan struct{} }

func newHeldCalls(t *testing.T) (*heldCalls, ollamatest.Option) {
	h := &heldCalls{starts: make(chan chan struct{})}
	over := make(chan struct{})
	t.Cleanup(func() { close(over) })
	return h, ollamatest.WithBeforeChat(func(ctx context.Context, _ string) error {
		gate := make(chan struct{})
		select {
		case h.starts <- gate:
		case <-ctx.Done():
			return ctx.Err()
		case <-over:
			return nil
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		case <-over:
		}
		return nil
	})
}

// next waits for the next call to be held and returns its tag (the message's content)
// and its gate.
func (h *heldCalls) next(t *testing.T, fake *ollamatest.Server) (string, chan struct{}) {
	t.Helper()
	select {
	case gate := <-h.starts:
		for _, c := range slices.Backward(fake.Calls()) {
			if m := tagRE.FindSubmatch(c.Body); m != nil && !c.Finished {
				return string(m[1]), gate
			}
		}
		t.Fatal("a held call without a tag")
	case <-waitCtx(t).Done():
		t.Fatal("no call started")
	}
	return "", nil
}

// queueStamp is the stamp of job id's queue message.
func queueStamp(t *testing.T, tb *testBundle, id string) time.Time {
	t.Helper()
	for from := uint64(0); ; {
		p, ok, err := tb.b.Store.Oldest(ctxT(t), from)
		if err != nil || !ok {
			t.Fatalf("queue message of %s not found: %v", id, err)
		}
		if p.JobID == id {
			return p.Enqueued
		}
		from = p.Seq + 1
	}
}

// A job canceled while it headed its queue does not age the job queued behind it: with
// a new job queued on the same queue before the next pick, the queue's count is as it
// was, and the worker took the canceled job's stamp for the new job's. A cancel past
// FOREMAN_MAX_WAIT so made its class look starved, and a fresh normal job ran before a
// waiting high one (a client that gave up on a long wait and asked again jumped the
// high class). Found by TestPickRuleUnderRandomWorkloads.
func TestACanceledHeadDoesNotAgeItsQueue(t *testing.T) {
	t.Parallel()
	held, gateOpt := newHeldCalls(t)
	tb := setupFake(t, []ollamatest.Option{gateOpt})
	var clock atomic.Pointer[time.Time]
	now := time.Now()
	clock.Store(&now)
	cfg := worker.WithServerClock(worker.Config{MaxWait: time.Hour}, func() time.Time { return *clock.Load() })
	tb.start(t, cfg)

	tb.tagged(t, "first", "tiny-a", broker.PriorityHigh)
	tag, gate := held.next(t, tb.fake)
	if tag != "first" {
		t.Fatalf("ran %s, want first", tag)
	}
	old := tb.tagged(t, "old", "tiny-b", broker.PriorityNormal)
	tb.tagged(t, "second", "tiny-a", broker.PriorityHigh)
	close(gate)
	// The pick of second reads old as its queue's head.
	if tag, gate = held.next(t, tb.fake); tag != "second" {
		t.Fatalf("ran %s, want second", tag)
	}
	// old waits past MaxWait, and its caller gives up and asks again.
	late := queueStamp(t, tb, old.ID).Add(time.Hour + time.Nanosecond)
	clock.Store(&late)
	if _, err := tb.b.Store.Cancel(ctxT(t), old.ID, "caller gone"); err != nil {
		t.Fatal(err)
	}
	tb.tagged(t, "again", "tiny-b", broker.PriorityNormal)
	tb.tagged(t, "high", "tiny-a", broker.PriorityHigh)
	close(gate)
	tag, gate = held.next(t, tb.fake)
	close(gate)
	if tag != "high" {
		t.Fatalf("ran %s next, want the waiting high job: the normal one queued after it is not late", tag)
	}
}

// The same through another foreman on the shared NATS: its cancel deletes the message,
// but the OnQueueRemoved of this foreman's store never hears of it, and until the index's
// full refresh (30 s) the canceled job's stamp stood for the job queued behind it: a
// fresh normal job ran here before a waiting high one. Every foreman sees the canceled
// state event of the job.
func TestACanceledHeadOnAnotherForemanDoesNotAgeItsQueue(t *testing.T) {
	t.Parallel()
	held, gateOpt := newHeldCalls(t)
	tb := setupFake(t, []ollamatest.Option{gateOpt})
	var clock atomic.Pointer[time.Time]
	now := time.Now()
	clock.Store(&now)
	cfg := worker.WithServerClock(worker.Config{MaxWait: time.Hour}, func() time.Time { return *clock.Load() })
	// The write-up of the first job is held until the second runs, so the pick of the
	// second looks at a settled queue and the index counts on what it read then: no
	// full look by chance (a removal under way during a look makes the next one full).
	var firstID atomic.Pointer[string]
	firstStored := make(chan struct{})
	cfg = worker.WithBeforeStoreDone(cfg, func(id string) {
		if p := firstID.Load(); p != nil && *p == id {
			<-firstStored
		}
	})
	w := tb.start(t, cfg)
	// Another foreman's store on the same NATS, which runs no worker here.
	other, err := broker.Open(ctxT(t), broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}

	first := tb.tagged(t, "first", "tiny-a", broker.PriorityHigh)
	firstID.Store(&first.ID)
	tag, gate := held.next(t, tb.fake)
	if tag != "first" {
		t.Fatalf("ran %s, want first", tag)
	}
	old := tb.tagged(t, "old", "tiny-b", broker.PriorityNormal)
	tb.tagged(t, "second", "tiny-a", broker.PriorityHigh)
	close(gate)
	// The pick of second reads old as its queue's head.
	if tag, gate = held.next(t, tb.fake); tag != "second" {
		t.Fatalf("ran %s, want second", tag)
	}
	close(firstStored)
	eventually(t, 30*time.Second, "first stored and acked", func() bool { return !w.Own(first.ID) })
	late := queueStamp(t, tb, old.ID).Add(time.Hour + time.Nanosecond)
	clock.Store(&late)
	// The other foreman's gateway cancels old (its caller gave up), and the caller asks
	// again.
	if _, err := other.Cancel(ctxT(t), old.ID, "caller gone"); err != nil {
		t.Fatal(err)
	}
	tb.tagged(t, "again", "tiny-b", broker.PriorityNormal)
	tb.tagged(t, "high", "tiny-a", broker.PriorityHigh)
	close(gate)
	tag, gate = held.next(t, tb.fake)
	close(gate)
	if tag != "high" {
		t.Fatalf("ran %s next, want the waiting high job: the normal one queued after it is not late", tag)
	}
}

// The queue view keeps its own copy of the queue (the backlog), told by counts too: a
// cancel of a queue's head and a job queued on the same queue before its next refresh
// leave the count as it was. The copy reads every new message, so it holds one more than
// the count and drops the canceled one; and the view reads each queue head's record,
// leaving out one that ended. Either keeps the canceled job out of the view, with its age
// (the test fails only with both broken): through this foreman or another.
func TestTheQueueViewDropsACanceledHeadReplacedOnItsQueue(t *testing.T) {
	t.Parallel()
	held, gateOpt := newHeldCalls(t)
	tb := setupFake(t, []ollamatest.Option{gateOpt})
	var clock atomic.Pointer[time.Time]
	now := time.Now()
	clock.Store(&now)
	cfg := worker.WithServerClock(worker.Config{MaxWait: time.Hour}, func() time.Time { return *clock.Load() })
	w := tb.start(t, cfg)
	other, err := broker.Open(ctxT(t), broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	tb.tagged(t, "first", "tiny-a", broker.PriorityHigh)
	if tag, gate := held.next(t, tb.fake); tag != "first" {
		t.Fatalf("ran %s, want first", tag)
	} else {
		defer close(gate)
	}
	old := tb.tagged(t, "old", "tiny-b", broker.PriorityNormal)
	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil || len(v.Queued) != 1 || v.Queued[0].JobID != old.ID {
		t.Fatalf("view %+v, %v: want old alone", v, err)
	}
	late := queueStamp(t, tb, old.ID).Add(time.Hour + time.Nanosecond)
	clock.Store(&late)
	for _, st := range []*broker.Store{tb.b.Store, other} { // this foreman, then another
		if _, err := st.Cancel(ctxT(t), old.ID, "caller gone"); err != nil {
			t.Fatal(err)
		}
		again := tb.tagged(t, "again", "tiny-b", broker.PriorityNormal)
		high := tb.tagged(t, "high", "tiny-a", broker.PriorityHigh)
		v, err = w.QueueView(ctxT(t), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, q := range v.Queued {
			got = append(got, q.JobID)
		}
		if want := []string{high.ID, again.ID}; !slices.Equal(got, want) {
			t.Fatalf("view %v, want [high again] %v (old %s)", got, want, old.ID)
		}
		if _, err := tb.b.Store.Cancel(ctxT(t), high.ID, "test"); err != nil {
			t.Fatal(err)
		}
		old = again
		late = queueStamp(t, tb, old.ID).Add(time.Hour + time.Nanosecond)
		clock.Store(&late)
		if v, err = w.QueueView(ctxT(t), time.Now()); err != nil || len(v.Queued) != 1 {
			t.Fatalf("view %+v, %v: want one job", v, err)
		}
	}
}

// The same for a job whose last attempt ran here and which another foreman then failed
// (its delivery limit's advisory, or its expiry, taken there): its record still names
// this foreman as its attempt's runner, so the index took its failed event for one of
// its own runs, whose ack marks the queue, and skipped it. No ack came from here: the
// other foreman removed the message, and until the index's full refresh (30 s) the
// failed job's stamp stood for the job queued behind it.
func TestAHeadFailedOnAnotherForemanAfterItRanHereDoesNotAgeItsQueue(t *testing.T) {
	t.Parallel()
	held, gateOpt := newHeldCalls(t)
	tb := setupFake(t, []ollamatest.Option{gateOpt})
	var clock atomic.Pointer[time.Time]
	now := time.Now()
	clock.Store(&now)
	cfg := worker.WithServerClock(worker.Config{MaxWait: time.Hour}, func() time.Time { return *clock.Load() })
	var firstID atomic.Pointer[string]
	firstStored := make(chan struct{})
	cfg = worker.WithBeforeStoreDone(cfg, func(id string) {
		if p := firstID.Load(); p != nil && *p == id {
			<-firstStored
		}
	})
	w := tb.start(t, cfg)
	other, err := broker.Open(ctxT(t), broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}

	first := tb.tagged(t, "first", "tiny-a", broker.PriorityHigh)
	firstID.Store(&first.ID)
	tag, gate := held.next(t, tb.fake)
	if tag != "first" {
		t.Fatalf("ran %s, want first", tag)
	}
	old := tb.tagged(t, "old", "tiny-b", broker.PriorityNormal)
	// Its last attempt ran here and failed: its record names this foreman's runner.
	if _, _, err := tb.b.Store.Modify(ctxT(t), old.ID, func(j *broker.Job) error {
		j.State, j.Attempt = broker.StateRetrying, 1
		j.Runner, j.RunnerBoot, j.RunnerAttempt = "this-mac", tb.b.Store.BootID(), 1
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	tb.tagged(t, "second", "tiny-a", broker.PriorityHigh)
	close(gate)
	if tag, gate = held.next(t, tb.fake); tag != "second" {
		t.Fatalf("ran %s, want second", tag)
	}
	close(firstStored)
	eventually(t, 30*time.Second, "first stored and acked", func() bool { return !w.Own(first.ID) })
	late := queueStamp(t, tb, old.ID).Add(time.Hour + time.Nanosecond)
	clock.Store(&late)
	// The other foreman fails old and removes its message, as its advisory does.
	if _, _, err := other.Modify(ctxT(t), old.ID, func(j *broker.Job) error {
		j.State, j.Error = broker.StateFailed, "attempts exhausted: delivered 5 times"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	p, ok, err := other.Oldest(ctxT(t), 0)
	for ok && err == nil && p.JobID != old.ID {
		p, ok, err = other.Oldest(ctxT(t), p.Seq+1)
	}
	if !ok || err != nil {
		t.Fatalf("old's message: %v %v", ok, err)
	}
	if err := other.RemoveEnded(ctxT(t), p); err != nil {
		t.Fatal(err)
	}
	tb.tagged(t, "again", "tiny-b", broker.PriorityNormal)
	tb.tagged(t, "high", "tiny-a", broker.PriorityHigh)
	close(gate)
	tag, gate = held.next(t, tb.fake)
	close(gate)
	if tag != "high" {
		t.Fatalf("ran %s next, want the waiting high job: the normal one queued after it is not late", tag)
	}
}
