package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// A job's result put (StoreArtifact, the worker's held-result write of ADR-0058) while
// the store cannot write (a fault that stands) fails at once with ErrStoreFailed and
// writes no chunk, as a large submit's body put does: it does not wait out its tries
// for answers a stream with a write error never gives, and end ErrUnavailable.
func TestResultPutUnderAStandingFaultWritesNothing(t *testing.T) {
	t.Parallel()
	b, failing := faultyStore(t)
	j, err := b.Store.Submit(ctxT(t), &broker.Job{Model: "m", Kind: broker.KindChat}, nil)
	if err != nil {
		t.Fatal(err)
	}
	failing.Store(true)
	if err := b.Store.CheckWriteFault(); err == nil {
		t.Fatal("the injected write fault does not stand")
	}
	before := artifactsLastSeq(t, b)
	_, err = b.Store.StoreArtifact(ctxT(t), j.ID, broker.ResultArtifact, "application/json", bigBody)
	if !errors.Is(err, broker.ErrStoreFailed) {
		t.Fatalf("result put under a standing fault: %v, want ErrStoreFailed", err)
	}
	if after := artifactsLastSeq(t, b); after != before {
		t.Errorf("the artifacts stream went from sequence %d to %d: the result was written under a standing fault", before, after)
	}
}

// A result put that goes unanswered (here its deadline has passed) is the store's fault
// when WriteFault reports one: ErrStoreFailed, which the worker holds the answer on,
// rather than ErrUnavailable after its tries. Without a fault it stays ErrUnavailable.
func TestResultPutThatTimesOutIsTheFault(t *testing.T) {
	t.Parallel()
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	put := func(s *broker.Store, id string) error {
		_, err := s.StoreArtifact(expired, id, broker.ResultArtifact, "application/json", bigBody)
		return err
	}
	// Two stores: the fault is asked at most once a second.
	healthy, _ := faultyStore(t)
	j, err := healthy.Store.Submit(ctxT(t), &broker.Job{Model: "m", Kind: broker.KindChat}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := put(healthy.Store, j.ID); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("result put that timed out, no fault: %v, want ErrUnavailable", err)
	}
	b, failing := faultyStore(t)
	if j, err = b.Store.Submit(ctxT(t), &broker.Job{Model: "m", Kind: broker.KindChat}, nil); err != nil {
		t.Fatal(err)
	}
	failing.Store(true)
	if err := put(b.Store, j.ID); !errors.Is(err, broker.ErrStoreFailed) {
		t.Fatalf("result put that timed out against a faulted store: %v, want ErrStoreFailed", err)
	}
	if b.Store.WriteFault() == nil {
		t.Error("the fault found by the put is not remembered")
	}
}
