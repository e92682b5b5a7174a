package worker_test

import (
	"fmt"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// With many queues (a queue per model, class and program: here 70 programs), a job another
// foreman runs at the head of the newest queue is shown running there, not waiting: every
// queue's head is read before anything behind one.
func TestQueueViewReadsEveryQueueHeadFirst(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	ctx := ctxT(t)
	for i := range 70 {
		j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Program: fmt.Sprintf("p%02d", i)}
		if _, err := tb.b.Store.Submit(ctx, j, []byte(chatBody("tiny-a", i))); err != nil {
			t.Fatal(err)
		}
	}
	hi := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Priority: broker.PriorityHigh}
	running, err := tb.b.Store.Submit(ctx, hi, []byte(chatBody("tiny-a", 99)))
	if err != nil {
		t.Fatal(err)
	}
	other, err := broker.Open(ctx, broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	release := tb.fake.Hold("tiny-a")
	defer release()
	tb.startOn(t, other, worker.Config{})
	ours, err := worker.New(worker.Config{Store: tb.b.Store, Target: tb.target, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	v := tb.viewOnceStarted(t, ours, running.ID)
	for _, q := range v.Queued {
		if q.JobID == running.ID {
			t.Errorf("job %s, running on the other foreman, is listed waiting at position %d (elsewhere: %d, total %d)", running.ID, q.QueuePosition, len(v.Elsewhere), len(v.Queued))
		}
	}
	if len(v.Elsewhere) != 1 || v.Elsewhere[0].JobID != running.ID || len(v.Queued) != 70 {
		t.Errorf("elsewhere %+v, %d waiting; want the running job elsewhere and 70 waiting", v.Elsewhere, len(v.Queued))
	}
}
