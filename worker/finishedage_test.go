package worker_test

import (
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A job that ran longer than MaxWait is not a job of its class waiting that long: its
// queue message, still there while its end is stored in the background, made its class
// look starved at the next pick, and a fresh normal job ran before a fresh high one
// (the queue view put the high job first).
func TestAFinishedJobDoesNotAgeItsClass(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	const maxWait = time.Minute
	var clock atomic.Pointer[time.Time] // nil: the real clock
	now := func() time.Time {
		if p := clock.Load(); p != nil {
			return *p
		}
		return time.Now()
	}
	release := tb.fake.Hold("tiny-a")
	n1 := tb.tagged(t, "n1", "tiny-a", broker.PriorityNormal)
	ended := make(chan struct{}) // holds n1's end, and its queue message, until closed
	cfg := worker.WithServerClock(worker.Config{MaxWait: maxWait}, now)
	cfg = worker.WithBeforeStoreDone(cfg, func(id string) {
		if id == n1.ID {
			<-ended
		}
	})
	tb.start(t, cfg)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	n2 := tb.tagged(t, "n2", "tiny-a", broker.PriorityNormal)
	hi := tb.tagged(t, "hi", "tiny-a", broker.PriorityHigh)
	// The next pick comes when n2 has waited exactly MaxWait (not late), n1 longer, and
	// normal had its last pick (n1's) longer ago.
	var enq time.Time
	for seq := uint64(1); enq.IsZero(); {
		p, ok, err := tb.b.Store.Oldest(ctxT(t), seq)
		if err != nil || !ok {
			t.Fatalf("n2's queue message: found %v, %v", ok, err)
		}
		if p.JobID == n2.ID {
			enq = p.Enqueued
		}
		seq = p.Seq + 1
	}
	at := enq.Add(maxWait)
	clock.Store(&at)
	release()
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 2); err != nil {
		t.Fatal(err)
	}
	close(ended)
	for _, j := range []*broker.Job{n1, n2, hi} {
		tb.waitState(t, j.ID, broker.StateDone)
	}
	var got []string
	for _, c := range tb.fake.Calls() {
		if m := tagRE.FindSubmatch(c.Body); m != nil {
			got = append(got, string(m[1]))
		}
	}
	if len(got) != 3 || got[1] != "hi" {
		t.Fatalf("served %v, want the high job right after n1", got)
	}
}
