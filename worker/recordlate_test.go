package worker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// Submit stores a job's record and its queue message at once, so the worker may take the
// message before the record is there: it must wait for the record and run the job, not
// drop the message as an orphan.
func TestMessageBeforeItsRecordRuns(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.start(t, worker.Config{})
	j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	body := chatBody("tiny-a", 1)
	tb.b.PublishBare(t, j, body)

	// Wait until the worker has taken the message and looked for its record: it then
	// watches the job's state subject (a request there finds a subscriber), or it has
	// dropped the message.
	eventually(t, 30*time.Second, "the worker waits for the record", func() bool {
		if n, err := tb.b.Store.QueueLen(ctxT(t)); err == nil && n == 0 {
			t.Fatal("the worker dropped the queue message before its record came")
		}
		_, err := tb.b.Conn.Request(broker.StateSubject(j.ID), nil, 20*time.Millisecond)
		return errors.Is(err, nats.ErrTimeout)
	})
	tb.b.CreateRecord(t, j)
	done := tb.waitState(t, j.ID, broker.StateDone)
	if done.Attempt != 1 {
		t.Fatalf("attempt %d, want 1", done.Attempt)
	}
	tb.waitQueueEmpty(t)
}

// A queue message whose record never comes (its submit died between the two writes) is
// dropped once it is older than the store's RecordGrace, and the worker goes on.
func TestOrphanMessageDroppedAfterGrace(t *testing.T) {
	t.Parallel()
	// A grace of 2 s (the window plus a second): the real job's two writes, on a loaded
	// machine, are not taken for an orphan's.
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.RetryWindow = time.Second }))
	tb.start(t, worker.Config{})
	orphan := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	tb.b.PublishBare(t, orphan, chatBody("tiny-a", 1))
	next := tb.chat(t, "tiny-a", 2)
	tb.waitState(t, next.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
	if _, _, err := tb.b.Store.Get(ctxT(t), orphan.ID); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("orphan's record: %v, want none", err)
	}
}

// Stop ends the worker's wait for a young message's record and hands the message back.
func TestStopEndsTheWaitForARecord(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.RetryWindow = 30 * time.Second }))
	w := tb.start(t, worker.Config{})
	j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	tb.b.PublishBare(t, j, chatBody("tiny-a", 1))
	eventually(t, 30*time.Second, "the worker waits for the record", func() bool {
		_, err := tb.b.Conn.Request(broker.StateSubject(j.ID), nil, 20*time.Millisecond)
		return errors.Is(err, nats.ErrTimeout)
	})
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		stopped <- w.Stop(ctx)
	}()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("stop: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Stop waited for the record")
	}
	if n, err := tb.b.Store.QueueLen(ctxT(t)); err != nil || n != 1 {
		t.Fatalf("queue holds %d messages (%v), want the message handed back", n, err)
	}
}
