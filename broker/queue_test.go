package broker_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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

// A job that ran longer than its queue consumer's InactiveThreshold (no fetch on its key
// meanwhile) lost its consumer: its ack finds no responder. Finish takes that as the ack
// it is moot, not as a leader election retried into an error; the key's next consumer
// delivers the message again (the worker drops it, its job having ended).
//
// That consumer is made again under the name of the one deleted a moment before, which
// nats-server may fail on its files while the deleted one still flushes its state (see
// TestNextMakesAgainAConsumerWhoseCreateFailedOnItsFiles). The pick is the worker's: a
// pick that fails is tried again, and only one that never delivers the job fails.
func TestFinishAfterTheConsumerWentIdle(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{"model":"m"}`)
	tok := token(t, "m")
	d, err := b.Store.Next(ctx, tok)
	if err != nil || d == nil {
		t.Fatalf("next: %v %v", d, err)
	}
	// What the server does to a pull consumer idle past its InactiveThreshold.
	if err := b.JetStream(t).DeleteConsumer(ctx, broker.QueueStream, broker.ConsumerName(tok)); err != nil {
		t.Fatal(err)
	}
	if err := b.Store.Finish(ctx, d); err != nil {
		t.Fatalf("finish: %v", err)
	}
	again := pick(t, b.Store, tok)
	if again == nil || again.JobID != j.ID {
		t.Fatalf("next after the consumer went: %+v; want the job's message again", again)
	}
}

// pick is Next as the worker's pick loop calls it: a pick that fails is tried again
// (after a pause) until the test's deadline, and the last error fails the test then.
func pick(t *testing.T, st *broker.Store, tok string) *broker.Lease {
	t.Helper()
	ctx := ctxT(t)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		d, err := st.Next(ctx, tok)
		if err == nil {
			return d
		}
		t.Logf("a pick failed, tried again: %v", err)
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("next: %v; no pick worked before the deadline", err)
		}
	}
}

// A queue whose consumer went idle past its InactiveThreshold, and which the server
// deleted, delivers the next job submitted to it at the first pick: the fetch that finds
// the consumer gone makes it again, rather than failing on the gone one at every pick
// (its queue would never run again until a restart).
func TestNextAfterTheConsumerWentIdle(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	tok := token(t, "m")
	for _, next := range []func() (*broker.Lease, error){
		func() (*broker.Lease, error) { return b.Store.Next(ctx, tok) },
		func() (*broker.Lease, error) { return b.Store.NextWait(ctx, tok, 2*time.Second) },
	} {
		if d, err := next(); err != nil || d != nil {
			t.Fatalf("next of an empty queue: %v %v", d, err)
		}
		// What the server does to a pull consumer idle past its InactiveThreshold.
		if err := b.JetStream(t).DeleteConsumer(ctx, broker.QueueStream, broker.ConsumerName(tok)); err != nil {
			t.Fatal(err)
		}
		j := submit(t, b.Store, "m", `{"model":"m"}`)
		d, err := next()
		if d == nil || d.JobID != j.ID {
			t.Fatalf("next after the consumer went: %+v, %v; want the new job", d, err)
		}
		if err := b.Store.Finish(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
}

// The same with the server's own deletion: a consumer idle past its InactiveThreshold
// (the job TTL here, a few seconds) goes, and the queue runs the next job all the same.
func TestNextAfterTheServerDeletedAnIdleConsumer(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.JobTTL = 3 * time.Second }))
	ctx := ctxT(t)
	tok := token(t, "m")
	if d, err := b.Store.Next(ctx, tok); err != nil || d != nil {
		t.Fatalf("next of an empty queue: %v %v", d, err)
	}
	js := b.JetStream(t)
	eventually(t, 20*time.Second, "the server deletes the idle consumer", func() bool {
		_, err := js.Consumer(ctx, broker.QueueStream, broker.ConsumerName(tok))
		return errors.Is(err, jetstream.ErrConsumerNotFound)
	})
	j := submit(t, b.Store, "m", `{"model":"m"}`)
	d, err := b.Store.Next(ctx, tok)
	if d == nil || d.JobID != j.ID {
		t.Fatalf("next after the server deleted the idle consumer: %+v, %v; want the new job", d, err)
	}
}

// Stale lists the queue messages stored before a time, oldest first, but none of a job
// that has a younger message too (requeued, its old message left behind): its wait began
// anew. With nothing that old it lists nothing.
func TestStaleSkipsJobsWithAYoungerMessage(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	waiting := submit(t, b.Store, "m", `{"model":"m"}`)
	requeued := submit(t, b.Store, "m", `{"model":"m"}`)
	cut := time.Now()
	msg := nats.NewMsg(broker.QueueSubject(token(t, "m")))
	msg.Header.Set(broker.HeaderJobID, requeued.ID)
	if _, err := b.JetStream(t).PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	got, err := b.Store.Stale(ctx, cut)
	if err != nil || len(got) != 1 || got[0].JobID != waiting.ID {
		t.Fatalf("stale before the requeue: %+v, %v; want only job %s", got, err, waiting.ID)
	}
	if got, err := b.Store.Stale(ctx, cut.Add(-time.Hour)); err != nil || len(got) != 0 {
		t.Fatalf("stale an hour before: %+v, %v; want none", got, err)
	}
}

// A job's message of a kind this store does not know (Config.Kinds) comes as
// ErrUnknownKind, its lease whole, for the worker to leave to a foreman that knows it; one
// that is no job's (here no valid id) is ErrUnusable whatever its kind.
func TestLeaseOfAnUnknownKind(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.Kinds = []broker.Kind{broker.KindChat} }))
	ctx := ctxT(t)
	tok := token(t, "tiny-a")
	publish := func(id string, kind broker.Kind) {
		t.Helper()
		m := nats.NewMsg(broker.QueueSubject(tok))
		m.Data = []byte(`{"model":"tiny-a","prompt":"x"}`)
		m.Header.Set(broker.HeaderJobID, id)
		m.Header.Set(broker.HeaderModel, "tiny-a")
		m.Header.Set(broker.HeaderKind, string(kind))
		if _, err := b.JetStream(t).PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if b.Store.Knows(broker.KindGenerate) || !b.Store.Knows(broker.KindChat) || b.Store.Knows("summarize") {
		t.Fatal("Knows does not follow Config.Kinds")
	}
	id := broker.NewID()
	publish(id, broker.KindGenerate) // a kind this build has, but not this store
	publish(broker.NewID(), "summarize")
	publish("not-a-ulid", "summarize")
	for i, want := range []string{string(broker.KindGenerate), "summarize"} {
		d, err := b.Store.Next(ctx, tok)
		if !errors.Is(err, broker.ErrUnknownKind) || errors.Is(err, broker.ErrUnusable) || d == nil || string(d.Kind) != want {
			t.Fatalf("lease %d: %+v, %v; want a lease of kind %q with ErrUnknownKind", i, d, err, want)
		}
		if i == 0 && (d.JobID != id || d.NumDelivered != 1) {
			t.Errorf("lease: job %s delivered %d times, want %s once", d.JobID, d.NumDelivered, id)
		}
		if err := d.Msg.Term(); err != nil {
			t.Fatal(err)
		}
	}
	if d, err := b.Store.Next(ctx, tok); !errors.Is(err, broker.ErrUnusable) || d == nil {
		t.Fatalf("lease without a valid id: %+v, %v; want ErrUnusable", d, err)
	}
}

// A queue message deleted already (taken and acked by the worker, removed by a cancel)
// is gone, not an error, for every deletion of foreman's: the server answers "no message
// found" as a failed deletion, which nats.go does not map to ErrMsgNotFound, and each
// caller's check for that let it through (a cancel racing the worker's take logged a
// warning; the abandoned-sync sweep failed its cancel).
func TestDeletingAGoneQueueMessageIsNoError(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	submit(t, b.Store, "m", `{}`)
	m, ok, err := b.Store.OldestOf(ctx, token(t, "m"))
	if err != nil || !ok {
		t.Fatalf("the job's message: %v %v", ok, err)
	}
	if err := b.Store.DeleteQueued(ctx, m.Seq); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := b.Store.DeleteQueued(ctx, m.Seq); err != nil {
		t.Fatalf("delete of a message deleted already: %v, want none", err)
	}
}

// A message gone from between two others is answered otherwise: the server finds nothing
// to remove at that sequence and says "sequence N not found" (err_code 10043), not "no
// message found". A soak run logged it once in about 490 cancels: a cancel racing the
// worker's take of a job queued behind others and before others.
func TestDeletingAGoneQueueMessageBetweenOthersIsNoError(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	for range 3 {
		submit(t, b.Store, "m", `{}`)
	}
	first, ok, err := b.Store.OldestOf(ctx, token(t, "m"))
	if err != nil || !ok {
		t.Fatalf("the first job's message: %v %v", ok, err)
	}
	middle := first.Seq + 1
	if _, ok, err := b.Store.Queued(ctx, middle); err != nil || !ok {
		t.Fatalf("the second job's message at %d: %v %v", middle, ok, err)
	}
	if err := b.Store.DeleteQueued(ctx, middle); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := b.Store.DeleteQueued(ctx, middle); err != nil {
		t.Fatalf("delete of a message deleted already: %v, want none", err)
	}
}

// Next finds a job its queue holds even when the server's count of the consumer's pending
// messages does not have it (yet): a no_wait pull is answered from that count alone, and
// the count lags a publish (the server signals its consumers after the store) and was
// seen one short after a deletion (a canceled job's message). With nothing awaiting an
// ack, Next asks again with a request the server serves from the stream.
func TestNextFindsAJobTheConsumersCountMisses(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	nextRightAfterSubmit(t, b, chatQueue(t), 100, "just stored")
}

// The second look of Next is not left out for a queue that also holds a job in retry
// back-off (awaiting an ack on the consumer): the queue holds more messages than that,
// so one is ready, and Next finds it however the server's count stands.
func TestNextFindsAJobBesideOneInBackOff(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	token := chatQueue(t)
	if _, err := b.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, chatQueueBody); err != nil {
		t.Fatal(err)
	}
	backOff, err := b.Store.NextWait(ctx, token, time.Second)
	if err != nil || backOff == nil {
		t.Fatalf("lease: %v, %v", backOff, err)
	}
	if err := backOff.Msg.NakWithDelay(time.Hour); err != nil {
		t.Fatal(err)
	}
	nextRightAfterSubmit(t, b, token, 50, "just stored beside one in back-off")
}

// chatQueueBody is the body of the chat jobs of chatQueue.
var chatQueueBody = []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`)

// chatQueue is the queue token of a tiny-a chat job with chatQueueBody.
func chatQueue(t *testing.T) string {
	t.Helper()
	k, err := broker.KeyOf(&broker.Job{Model: "tiny-a", Kind: broker.KindChat}, chatQueueBody)
	if err != nil {
		t.Fatal(err)
	}
	return k.String()
}

// nextRightAfterSubmit submits n chat jobs to queue token one by one, each fetched with
// Next the moment its submit returns (the server may not have counted it yet), and
// fails t unless Next gives that job; what says how the job stands in the failure.
func nextRightAfterSubmit(t *testing.T, b *brokertest.Bundle, token string, n int, what string) {
	t.Helper()
	ctx := ctxT(t)
	for i := range n {
		j, err := b.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, chatQueueBody)
		if err != nil {
			t.Fatal(err)
		}
		d, err := b.Store.Next(ctx, token)
		if err != nil || d == nil {
			t.Fatalf("job %d, %s: Next = %v, %v", i, what, d, err)
		}
		if d.JobID != j.ID {
			t.Fatalf("job %d: Next gave %s, want %s", i, d.JobID, j.ID)
		}
		if err := b.Store.Finish(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
}
