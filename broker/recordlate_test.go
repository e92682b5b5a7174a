package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A lease whose record is not stored yet gets it once it is: JobOf waits for a young
// message's record instead of calling the message an orphan.
func TestJobOfWaitsForALateRecord(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j := &broker.Job{ID: broker.NewID(), Model: "m", Kind: broker.KindChat}
	b.PublishBare(t, j, `{}`)
	d, err := b.Store.Next(ctx, token(t, "m"))
	if err != nil || d == nil {
		t.Fatalf("next: %v %v", d, err)
	}
	type result struct {
		j   *broker.Job
		err error
	}
	got := make(chan result, 1)
	go func() {
		j, _, err := b.Store.JobOf(ctx, d)
		got <- result{j, err}
	}()
	// JobOf watches the job's state subject while it waits: a request there then finds a
	// subscriber instead of no responders.
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case r := <-got:
			t.Fatalf("JobOf returned before the record was stored: %v %v", r.j, r.err)
		default:
		}
		_, err := b.Conn.Request(broker.StateSubject(j.ID), nil, 20*time.Millisecond)
		if errors.Is(err, nats.ErrTimeout) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("JobOf never waited for the record")
		}
	}
	b.CreateRecord(t, j)
	r := <-got
	if r.err != nil || r.j.ID != j.ID || r.j.State != broker.StateQueued {
		t.Fatalf("JobOf = %+v, %v; want the queued record", r.j, r.err)
	}
}

// A message older than RecordGrace without a record is an orphan at once: JobOf does not
// wait (here the grace is an hour, and the message two hours old by the server's clock).
func TestJobOfOldOrphanNotFound(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.RetryWindow = time.Hour }))
	b.Store.ShiftServerClock(2 * time.Hour)
	ctx := ctxT(t)
	j := &broker.Job{ID: broker.NewID(), Model: "m", Kind: broker.KindChat}
	b.PublishBare(t, j, `{}`)
	d, err := b.Store.Next(ctx, token(t, "m"))
	if err != nil || d == nil {
		t.Fatalf("next: %v %v", d, err)
	}
	if _, _, err := b.Store.JobOf(ctx, d); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("JobOf of an old orphan: %v, want ErrNotFound", err)
	}
}

// A submit refused for a full queue leaves neither its record nor a queue message,
// though its record was written together with the refused message.
func TestQueueFullLeavesNoRecord(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 1 }))
	ctx := ctxT(t)
	submit(t, b.Store, "m", `{}`)
	id := broker.NewID()
	_, err := b.Store.Submit(ctx, &broker.Job{ID: id, Model: "m", Kind: broker.KindChat}, []byte(`{}`))
	if !errors.Is(err, broker.ErrQueueFull) {
		t.Fatalf("submit into a full queue: %v, want ErrQueueFull", err)
	}
	if _, _, err := b.Store.Get(ctx, id); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("record of the refused job: %v, want ErrNotFound", err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Fatalf("queue holds %d messages (%v), want 1", n, err)
	}
}

// A submit whose record is refused while its queue message was stored takes the message
// back: no job is left that the caller was told failed.
func TestRecordRefusedLeavesNoQueueMessage(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	js := brokertest.JetStream(t, b.Conn)
	kvs, err := js.Stream(ctx, "KV_"+broker.JobsBucket)
	if err != nil {
		t.Fatal(err)
	}
	cfg := kvs.CachedInfo().Config
	cfg.MaxMsgSize = 16 // every record is larger: the bucket refuses it
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	id := broker.NewID()
	if _, err := b.Store.Submit(ctx, &broker.Job{ID: id, Model: "m", Kind: broker.KindChat}, []byte(`{}`)); err == nil {
		t.Fatal("submit with its record refused succeeded")
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 0 {
		t.Fatalf("queue holds %d messages (%v), want 0", n, err)
	}
}

// A create whose first try was stored unseen, and whose job a worker started before the
// retry found the record, keeps the message this submit queued: the worker holds it, and
// deleting it would leave a running job that nothing could hand back or redeliver.
func TestSubmitCreateLandedUnseenKeepsARunningJobsMessage(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	b.Store.LoseCreateAnswer(context.DeadlineExceeded, func(id string) {
		_, _, err := b.Store.Modify(ctx, id, func(j *broker.Job) error {
			j.State, j.Attempt = broker.StateWorking, 1
			return nil
		})
		if err != nil {
			t.Errorf("start the job: %v", err)
		}
	})
	j, err := b.Store.Submit(ctx, &broker.Job{Model: "m", Kind: broker.KindChat}, []byte(`{"model":"m"}`))
	if err != nil || j.State != broker.StateWorking {
		t.Fatalf("submit: %+v %v, want the running job", j, err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Fatalf("queue holds %d messages (%v), want the running job's one", n, err)
	}
}

// A create stored though its caller heard only an error (its context ended as the answer
// was on its way) leaves a whole job, not a record without its message: the submit
// succeeds.
func TestSubmitCreateLandedButAnsweredWithErrorIsWhole(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	b.Store.LoseCreateAnswer(context.Canceled, nil)
	j, err := b.Store.Submit(ctx, &broker.Job{Model: "m", Kind: broker.KindChat}, []byte(`{"model":"m"}`))
	if err != nil {
		t.Fatalf("submit: %v, want the job (its record and message are stored)", err)
	}
	if rec, _, err := b.Store.Get(ctx, j.ID); err != nil || rec.State != broker.StateQueued {
		t.Fatalf("record %+v %v, want queued", rec, err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Fatalf("queue holds %d messages (%v), want the job's one", n, err)
	}
}

// A create whose first try was stored unseen, whose queue message is refused (a full
// queue), leaves no job: the caller is told the submit failed (and, with an idempotency
// key, gets the key back), so a record left queued without a message would wait for
// nothing, listed as queued until the job TTL, while the caller's retry made a second job.
func TestSubmitCreateLandedUnseenWithQueueFullLeavesNoRecord(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 1 }))
	ctx := ctxT(t)
	if _, err := b.Store.Submit(ctx, &broker.Job{Model: "m", Kind: broker.KindChat}, []byte(`{"model":"m"}`)); err != nil {
		t.Fatalf("fill the queue: %v", err)
	}
	b.Store.LoseCreateAnswer(context.DeadlineExceeded, nil)
	j := &broker.Job{Model: "m", Kind: broker.KindChat}
	if _, err := b.Store.Submit(ctx, j, []byte(`{"model":"m"}`)); !errors.Is(err, broker.ErrQueueFull) {
		t.Fatalf("submit: %v, want ErrQueueFull", err)
	}
	if rec, _, err := b.Store.Get(ctx, j.ID); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("record %+v %v, want none: the submit failed", rec, err)
	}
}
