package broker_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// On a shared NATS each foreman's store tells the state changes it wrote from the
// others' (the job metrics count only their own foreman's): a cancel written by one
// store is its own, not the other's.
func TestWroteStateTellsThisStoresChanges(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	nc, err := b.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	other, err := broker.Open(ctx, broker.Config{Conn: nc})
	if err != nil {
		t.Fatal(err)
	}
	j, err := b.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	ended, err := other.Cancel(ctx, j.ID, "by the other foreman")
	if err != nil {
		t.Fatal(err)
	}
	if ended.State != broker.StateCanceled {
		t.Fatalf("state %s after the cancel", ended.State)
	}
	if !other.WroteState(ended) {
		t.Error("the store that wrote the cancel does not know it as its own")
	}
	if b.Store.WroteState(ended) {
		t.Error("a store took another's cancel for its own")
	}
	// A store of its own (the embedded server) wrote every change there is.
	excl, err := broker.Open(ctx, broker.Config{Conn: nc, Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	if !excl.WroteState(ended) {
		t.Error("an exclusive store does not take every change for its own")
	}
}

// What a store notes of its own writes is for telling them from other foremen's. A store
// of its own (the embedded server) takes every change for its own and noted each all the
// same, up to 50,000, for nothing; on a shared NATS a change's event comes at once and a
// job's last a job TTL after its last write, yet each was kept until 50,000 more had been
// noted. Now the store of its own notes none, and the shared one forgets a change two job
// TTLs on (its clock moved on here): what they hold is counted.
func TestOwnWritesGoWithTheirJobs(t *testing.T) {
	t.Parallel()
	var shift atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(shift.Load())) }
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.Now = now }))
	nc, err := b.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	excl, err := broker.Open(ctx, broker.Config{Conn: nc, Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	cancelJobs := func(st *broker.Store, n int) {
		t.Helper()
		for range n {
			j, err := st.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.Cancel(ctx, j.ID, "done with it"); err != nil {
				t.Fatal(err)
			}
		}
	}
	const jobs = 20
	cancelJobs(excl, jobs)
	if got := excl.OwnWritesKnown(); got != 0 {
		t.Errorf("a store of its own holds %d of its writes after %d cancels; want none (it takes every change for its own)", got, jobs)
	}
	cancelJobs(b.Store, jobs)
	if got := b.Store.OwnWritesKnown(); got != jobs {
		t.Fatalf("a shared store holds %d of its writes after %d cancels; want %d", got, jobs, jobs)
	}
	shift.Store(int64(2*b.Store.JobTTL() + time.Minute))
	cancelJobs(b.Store, 1)
	if got := b.Store.OwnWritesKnown(); got != 1 {
		t.Errorf("a shared store holds %d of its writes two job TTLs after %d and one more; want 1", got, jobs)
	}
}
