package broker_test

import (
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

func TestQueuedBySequence(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j1 := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	j2 := submit(t, b.Store, "tiny-b", `{"model":"tiny-b"}`)
	oldest, ok, err := b.Store.Oldest(ctx, 0)
	if err != nil || !ok || oldest.JobID != j1.ID || oldest.Token != token(t, "tiny-a") {
		t.Fatalf("Oldest = %+v %v %v", oldest, ok, err)
	}
	p, ok, err := b.Store.Queued(ctx, oldest.Seq+1)
	if err != nil || !ok || p.JobID != j2.ID || p.Token != token(t, "tiny-b") || p.Seq != oldest.Seq+1 {
		t.Fatalf("Queued(next) = %+v %v %v", p, ok, err)
	}
	if err := b.Store.DeleteQueued(ctx, p.Seq); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := b.Store.Queued(ctx, p.Seq); ok || err != nil {
		t.Fatalf("Queued(deleted) = %v %v, want not found", ok, err)
	}
}

// NextWait is how an idle worker takes a job the moment it is stored: a pull that the
// server answers on arrival, not a poll.
func TestNextWaitTakesAJobOnArrival(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	tok := token(t, "tiny-a")
	if d, err := b.Store.NextWait(ctx, tok, 10*time.Millisecond); d != nil || err != nil {
		t.Fatalf("empty queue: %v %v, want nothing", d, err)
	}
	got := make(chan *broker.Lease, 1)
	errs := make(chan error, 1)
	go func() {
		d, err := b.Store.NextWait(ctx, tok, 20*time.Second)
		errs <- err
		got <- d
	}()
	j := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	if err := <-errs; err != nil {
		t.Fatalf("NextWait: %v", err)
	}
	if d := <-got; d == nil || d.JobID != j.ID {
		t.Fatalf("NextWait gave %+v, want job %s", d, j.ID)
	}
}
