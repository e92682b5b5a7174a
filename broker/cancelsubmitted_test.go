package broker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// Callers hanging up together (a client's timeout across a batch, a proxy dropping its
// connections) cancel jobs submitted together. Each cancel looked for its job's queue
// message by reading the job's subject from its submit on: 600 of them read the queue
// about 95,000 times, ran out of their 5 s and left 327 messages in the queue, holding
// its room (and warning) until the worker met them. Each job's message is now deleted by
// the sequence its submit stored it at: no read of the queue, nothing left in it.
func TestCancelsOfJobsSubmittedTogetherReadNoQueue(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	const n = 200
	jobs := make([]*broker.Job, n)
	var wg sync.WaitGroup
	for i := range jobs {
		wg.Go(func() {
			j, err := b.Store.Submit(ctx, &broker.Job{Model: "m", Kind: broker.KindChat}, []byte(`{"model":"m"}`))
			if err != nil {
				t.Error(err)
			}
			jobs[i] = j
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	reads := queueReads(t, b, func() {
		for _, j := range jobs {
			wg.Go(func() {
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				if c, err := b.Store.CancelSubmitted(cctx, j, "client disconnected"); err != nil || c.State != broker.StateCanceled {
					t.Errorf("cancel %s: %v %v", j.ID, c, err)
				}
			})
		}
		wg.Wait()
	})
	if reads != 0 {
		t.Errorf("the cancels read the queue %d times, want none", reads)
	}
	if left, err := b.Store.QueueLen(ctx); err != nil || left != 0 {
		t.Errorf("%d messages (%v) left in the queue after every job was canceled", left, err)
	}
}

// A job whose message is no longer at the sequence its submit stored it at (taken, and
// queued again as another message) is canceled as Cancel does: its message is looked
// for and removed. So is a job its caller did not submit (a record read back).
func TestCancelSubmittedOfAMovedMessageLooksForIt(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	const body = `{"model":"m"}`
	moved := submit(t, b.Store, "m", body)
	seq := broker.SubmitSeq(moved)
	if seq == 0 {
		t.Fatal("Submit kept no sequence of its queue message")
	}
	if err := b.Store.DeleteQueued(ctx, seq); err != nil {
		t.Fatal(err)
	}
	// The message it is in the queue by now: a copy under no message id, which the
	// queue's duplicate window would drop.
	msg := brokertest.QueueMsg(t, moved, body)
	msg.Header.Del(nats.MsgIdHdr)
	b.PublishQueueMsg(t, msg)
	if n, _ := b.Store.QueueLen(ctx); n != 1 {
		t.Fatalf("queue holds %d messages, want the job's new one", n)
	}
	if c, err := b.Store.CancelSubmitted(ctx, moved, "gone"); err != nil || c.State != broker.StateCanceled {
		t.Fatalf("cancel: %v %v", c, err)
	}
	if n, _ := b.Store.QueueLen(ctx); n != 0 {
		t.Errorf("queue holds %d messages after the cancel, want the job's new one removed", n)
	}

	kept := submit(t, b.Store, "m", body)
	read, _, err := b.Store.Get(ctx, kept.ID)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := b.Store.CancelSubmitted(ctx, read, "gone"); err != nil || c.State != broker.StateCanceled {
		t.Fatalf("cancel of a record read back: %v %v", c, err)
	}
	if n, _ := b.Store.QueueLen(ctx); n != 0 {
		t.Errorf("queue holds %d messages after the cancel of a record read back, want none", n)
	}
}
