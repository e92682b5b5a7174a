package broker_test

import (
	"context"
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
