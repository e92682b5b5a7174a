package worker_test

import (
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// Two Macs on one NATS. Program b's only job runs on the other Mac, its message heading
// b's queue, younger than MaxWait; b queues another job, after c queued one, before this
// Mac's next pick. That pick still sees b's running job heading its queue (waiting
// looks past such a head only once it is older than MaxWait), so b keeps its turn and
// its new job goes before c's. The view dropped the running job before asking whether b
// ran out of jobs (ranOut), found b's new job the only one, newer than the last look,
// and put it at the back: GET /queue said c1 runs next, and b2 did.
func TestTheViewGivesTurnsFromTheHeadsThePickSees(t *testing.T) {
	t.Parallel()
	held, gateOpt := newHeldCalls(t)
	tb := setupFake(t, []ollamatest.Option{gateOpt})
	macB, _, _ := tb.otherMac(t, "tiny-a")
	b1 := tb.programJob(t, "b1", "b")
	if err := macB.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	tb.waitRunning(t, b1.ID)
	tb.programJob(t, "a1", "a")
	w := tb.start(t, worker.Config{MaxWait: time.Hour, IdlePoll: 20 * time.Millisecond, Elsewhere: offeredElsewhere})
	// This Mac's first pick saw b (its job running on the other Mac) and a, and took a.
	tag, gate := held.next(t, tb.fake)
	if tag != "a1" {
		t.Fatalf("ran %s, want a1", tag)
	}
	c1 := tb.programJob(t, "c1", "c")
	b2 := tb.programJob(t, "b2", "b")
	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, q := range v.Queued {
		order = append(order, q.JobID)
	}
	close(gate)
	tag, gate = held.next(t, tb.fake)
	close(gate)
	if tag != "b2" {
		t.Fatalf("ran %s next, want b2: b kept its turn while its job ran on the other Mac", tag)
	}
	if len(order) != 2 || order[0] != b2.ID || order[1] != c1.ID {
		t.Errorf("view %v, want b2 (%s) then c1 (%s), the order the pick ran", order, b2.ID, c1.ID)
	}
}
