package broker_test

import (
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// waitingWithoutMessage submits a job of model, takes its delivery as a worker does,
// writes its record as state (at attempt 1), and removes its queue message: the job's
// queue message is gone while its record still waits or runs. JetStream drops a queue
// message at the job TTL's age (the queue's MaxAge) even while a worker holds it: a run
// that outlived it, a retry's kept delivery (ADR-0100), a NAK whose delay ran past it.
// A foreman killed then leaves nothing that delivers the job again.
func waitingWithoutMessage(t *testing.T, b *brokertest.Bundle, model string, state broker.State) *broker.Job {
	t.Helper()
	ctx := ctxT(t)
	j := submit(t, b.Store, model, `{"model":"`+model+`"}`)
	d, err := b.Store.Next(ctx, token(t, model))
	if err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("take the job: %v %v", d, err)
	}
	if _, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error {
		j.State, j.Attempt = state, 1
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Store.DeleteQueued(ctx, d.Seq); err != nil {
		t.Fatal(err)
	}
	return j
}

// On a store of its own, a job whose record says retrying (or running) when foreman
// starts, but whose queue message is gone, would never run: the reclaim delivers only
// messages, the expiry looks only at messages, and the record was listed retrying until
// its TTL dropped it (a day later a 404). The start's sweep, which lists those records
// already, ends it failed at once (ADR-0123). One whose message waits is left to run.
func TestCancelAbandonedEndsAWaitingJobWhoseMessageIsGone(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(exclusive))
	ctx := ctxT(t)
	retrying := waitingWithoutMessage(t, b, "tiny-a", broker.StateRetrying)
	working := waitingWithoutMessage(t, b, "tiny-b", broker.StateWorking)
	kept := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	if _, _, err := b.Store.Modify(ctx, kept.ID, func(j *broker.Job) error {
		j.State, j.Attempt = broker.StateRetrying, 1
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	b.Restart(t)

	if _, err := b.Store.CancelAbandoned(ctx); err != nil {
		t.Fatal(err)
	}
	for _, j := range []*broker.Job{retrying, working} {
		got, _, err := b.Store.Get(ctx, j.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != broker.StateFailed || !strings.HasPrefix(got.Error, "lost: ") {
			t.Errorf("job %s whose queue message is gone: %s (%q), want failed (lost: ...)", j.ID, got.State, got.Error)
		}
	}
	if got, _, _ := b.Store.Get(ctx, kept.ID); got.State != broker.StateRetrying {
		t.Errorf("retrying job whose message waits: %s (%q), want retrying", got.State, got.Error)
	}
}

// On a shared NATS the sweep leaves such a record alone: there it may be a live
// foreman's (a kept delivery whose message the TTL dropped, a requeue between its
// rewrite and its publish), and the crashed foreman's presence still stands when it
// starts again (ADR-0100, ADR-0123).
func TestCancelAbandonedLeavesAWaitingJobWithoutMessageOnASharedStore(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	retrying := waitingWithoutMessage(t, b, "tiny-a", broker.StateRetrying)
	b.Restart(t)

	if _, err := b.Store.CancelAbandoned(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := b.Store.Get(ctx, retrying.ID); got.State != broker.StateRetrying {
		t.Errorf("retrying job without a message on a shared store: %s (%q), want retrying", got.State, got.Error)
	}
}
