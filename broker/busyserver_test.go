package broker_test

import (
	"errors"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// answerLatency is how long the busy server below takes to answer a write: longer than
// one try's bound on a cluster, well inside the retry window (5 s by default).
const answerLatency = broker.AttemptTimeout + time.Second

// The embedded server, busy with other work (a loaded CPU, a slow disk), answers the
// writes of a submit and of a record update later than one try's bound on a cluster: the
// writes are stored, and the calls succeed. Before, each try was cut at that bound and
// sent again behind the first, until the retry window ran out: a submit to a healthy
// store was answered 503 (ErrUnavailable).
func TestBusyEmbeddedServerAnswersLate(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(exclusive))
	b.Store.AnswerWritesAfter(answerLatency)
	ctx := ctxT(t)
	j, err := b.Store.Submit(ctx, &broker.Job{Model: "m", Kind: broker.KindChat}, []byte(`{"model":"m"}`))
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Fatalf("queue holds %d messages (%v), want the job's one", n, err)
	}
	if _, err := b.Store.Cancel(ctx, j.ID, "canceled by the test"); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	if rec, _, err := b.Store.Get(ctx, j.ID); err != nil || rec.State != broker.StateCanceled {
		t.Fatalf("record %+v %v, want canceled", rec, err)
	}
}

// On a store that may be replicated each try is still cut at its bound, so that a request
// lost to a node that died leaves time for the next: an answer slower than that bound is
// not waited for, and the submit fails with ErrUnavailable once the window has run out.
// Its record, stored unseen, is found and discarded: the caller was told the submit
// failed, and a job left whole would run all the same.
func TestSharedStoreCutsSlowTries(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.RetryWindow = answerLatency + time.Second }))
	b.Store.AnswerWritesAfter(answerLatency)
	ctx := ctxT(t)
	id := broker.NewID()
	_, err := b.Store.Submit(ctx, &broker.Job{ID: id, Model: "m", Kind: broker.KindChat}, []byte(`{"model":"m"}`))
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("submit: %v, want ErrUnavailable", err)
	}
	if _, _, err := b.Store.Get(ctx, id); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("record of the failed submit: %v, want ErrNotFound", err)
	}
}
