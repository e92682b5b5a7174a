package worker_test

import (
	"fmt"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// programJob submits a tagged chat of tiny-a for program.
func (tb *testBundle) programJob(t *testing.T, tag, program string) *broker.Job {
	t.Helper()
	body := fmt.Sprintf(`{"model":"tiny-a","messages":[{"role":"user","content":%q}]}`, tag)
	j, err := tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Program: program}, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// A program whose waiting jobs were all canceled and that queued a new one before the
// next pick forgets its turn, as one whose queue a pick found empty does: it joins the
// back of the rotation with the programs that came meanwhile, by the age of their jobs.
// It kept its old turn, and its new job went before the older job of a program that
// queued in between (the README: a program seen again after its jobs ran out joins the
// back of the rotation). The queue view plans the same.
func TestAProgramWhoseJobsRanOutBetweenPicksForgetsItsTurn(t *testing.T) {
	t.Parallel()
	held, gateOpt := newHeldCalls(t)
	tb := setupFake(t, []ollamatest.Option{gateOpt})
	w := tb.start(t, worker.Config{MaxWait: time.Hour})

	tb.programJob(t, "first", "z")
	tag, gate := held.next(t, tb.fake)
	if tag != "first" {
		t.Fatalf("ran %s, want first", tag)
	}
	tb.programJob(t, "a1", "a")
	b1 := tb.programJob(t, "b1", "b")
	close(gate)
	// a and b join the rotation together; a1 is the older job.
	if tag, gate = held.next(t, tb.fake); tag != "a1" {
		t.Fatalf("ran %s, want a1", tag)
	}
	// b gives up its job and asks again, after c queued one.
	if _, err := tb.b.Store.Cancel(ctxT(t), b1.ID, "test"); err != nil {
		t.Fatal(err)
	}
	c1 := tb.programJob(t, "c1", "c")
	b2 := tb.programJob(t, "b2", "b")
	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Queued) != 2 || v.Queued[0].JobID != c1.ID || v.Queued[1].JobID != b2.ID {
		t.Errorf("view %+v, want c1 (%s) then b2 (%s)", v.Queued, c1.ID, b2.ID)
	}
	close(gate)
	tag, gate = held.next(t, tb.fake)
	close(gate)
	if tag != "c1" {
		t.Fatalf("ran %s next, want c1: b's turn went with its canceled job", tag)
	}
}
