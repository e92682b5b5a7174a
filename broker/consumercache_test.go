package broker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// Queue keys come from callers: a program name (or load options) new with every job
// makes a new queue each time. The store's cache of queue consumers forgets those not
// fetched from for a while, instead of growing for the process's life.
func TestQueueConsumerCacheIsBounded(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.Now = clock }))
	// Each job has a deadline of its own: 300 submits and fetches, each fetch making a
	// consumer, under one minute's failed once under CPU stress, on the machine's speed,
	// not on the cache.
	const jobs = 300
	for i := range jobs {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t.Cleanup(cancel)
		j, err := b.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat, Program: fmt.Sprintf("run-%d", i)}, []byte(`{"model":"tiny-a"}`))
		if err != nil {
			t.Fatal(err)
		}
		k, err := broker.KeyOf(j, nil)
		if err != nil {
			t.Fatal(err)
		}
		d, err := b.Store.Next(ctx, k.String())
		if err != nil || d == nil {
			t.Fatalf("fetch job %d: %v, %v", i, d, err)
		}
		mu.Lock()
		now = now.Add(time.Second) // a job a second
		mu.Unlock()
	}
	if n := b.Store.CachedConsumers(); n > 256 {
		t.Fatalf("%d queue consumers kept after %d one-job queues, want at most 256", n, jobs)
	}
}

// nats-server caps a stream's consumers (1,000 by default since 2.15, or an operator's
// limit), and every queue key that ran a job in the last hour keeps its consumer: a
// thousand programs, or a caller that names a new one (or new load options) for every
// request, used to leave every later queue unable to get one, its jobs stuck at the head
// of their queues for up to an hour. At the limit the store deletes consumers that hold
// nothing for a worker (no delivery awaiting its ack, no fetch waiting) and makes its
// own; a consumer whose job is running is left alone.
func TestQueueConsumerPastTheServersLimit(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	keyOf := func(program string) string {
		t.Helper()
		k, err := broker.KeyOf(&broker.Job{Model: "tiny-a", Kind: broker.KindChat, Program: program}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return k.String()
	}
	submit := func(program string) (*broker.Job, string) {
		t.Helper()
		j, err := b.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat, Program: program}, []byte(`{"model":"tiny-a"}`))
		if err != nil {
			t.Fatal(err)
		}
		return j, keyOf(program)
	}
	busy, busyKey := submit("busy")
	running, err := b.Store.NextWait(ctx, busyKey, arrival)
	if err != nil || running == nil || running.JobID != busy.ID {
		t.Fatalf("lease the running job: %+v, %v", running, err)
	}
	// A queue that ran a job and will have another queued.
	waitingKey := keyOf("queued")
	if d, err := b.Store.Next(ctx, waitingKey); err != nil || d != nil {
		t.Fatalf("fetch from an empty queue: %+v, %v", d, err)
	}
	// The consumers of queues that ran a job in the last hour, up to the server's limit.
	js := b.JetStream(t)
	standIn := func(i int) error {
		tok := keyOf(fmt.Sprintf("old-%d", i))
		_, err := js.CreateConsumer(ctx, broker.QueueStream, jetstream.ConsumerConfig{
			Durable: broker.ConsumerName(tok), FilterSubject: broker.QueueSubject(tok),
			AckPolicy: jetstream.AckExplicitPolicy, InactiveThreshold: time.Hour, MemoryStorage: true,
		})
		return err
	}
	n := 0
	for ; ; n++ {
		err := standIn(n)
		if errors.Is(err, jetstream.ErrMaximumConsumersLimit) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if n == 5000 {
			t.Fatal("the server took 5,000 consumers on the queue: no limit, the test shows nothing")
		}
	}
	// One of them has a job queued: its consumer goes last.
	waiting, _ := submit("queued")

	fresh, freshKey := submit("new")
	d, err := b.Store.NextWait(ctx, freshKey, arrival)
	if err != nil || d == nil || d.JobID != fresh.ID {
		t.Fatalf("a new queue's job at the consumer limit: %+v, %v; want it leased", d, err)
	}
	if err := b.Store.Finish(ctx, d); err != nil {
		t.Fatal(err)
	}
	// The running job's consumer is still there to take its ack, and so is the one with a
	// job queued; the longest idle went.
	for what, key := range map[string]string{"running": busyKey, "queued": waitingKey} {
		if _, err := js.Consumer(ctx, broker.QueueStream, broker.ConsumerName(key)); err != nil {
			t.Fatalf("the consumer of the %s job: %v", what, err)
		}
	}
	if _, err := js.Consumer(ctx, broker.QueueStream, broker.ConsumerName(keyOf("old-0"))); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatalf("the longest idle consumer: %v, want it deleted", err)
	}
	if err := running.Msg.DoubleAck(ctx); err != nil {
		t.Fatalf("ack the running job: %v", err)
	}
	if d, err := b.Store.NextWait(ctx, waitingKey, arrival); err != nil || d == nil || d.JobID != waiting.ID {
		t.Fatalf("the queued job: %+v, %v", d, err)
	}
}
