package broker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// At the server's cap on the queue stream's consumers the store deletes the queue
// consumers idle longest, by their last delivery or ack, not by their age: a queue made
// long ago that ran a job a moment ago keeps its consumer. It deletes a batch of them,
// room for the next new queues too, and those of long keys (named by a digest, "q-") as
// well. A consumer on the stream that is not a queue's (an operator's own) is no
// foreman's to delete.
func TestQueueConsumerReapSparesTheRecentlyActiveAndOthers(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	long := strings.Repeat("p", 60) // with a long model name, a key past 255 bytes: its consumer is named by a digest
	model := strings.Repeat("m", 140)
	keyOf := func(program string) string {
		t.Helper()
		k, err := broker.KeyOf(&broker.Job{Model: model, Kind: broker.KindChat, Program: program}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return k.String()
	}
	js := b.JetStream(t)
	standIn := func(i int) (string, error) {
		tok := keyOf(fmt.Sprintf("%s-%d", long, i))
		_, err := js.CreateConsumer(ctx, broker.QueueStream, jetstream.ConsumerConfig{
			Durable: broker.ConsumerName(tok), FilterSubject: broker.QueueSubject(tok),
			AckPolicy: jetstream.AckExplicitPolicy, InactiveThreshold: time.Hour, MemoryStorage: true,
		})
		return tok, err
	}
	oldTok, err := standIn(0)
	if err != nil {
		t.Fatal(err)
	}
	if name := broker.ConsumerName(oldTok); !strings.HasPrefix(name, "q-") {
		t.Fatalf("a long key's consumer is named %q, want a digest's name", name)
	}
	const audit = "ops-audit"
	if _, err := js.CreateConsumer(ctx, broker.QueueStream, jetstream.ConsumerConfig{
		Durable: audit, FilterSubject: broker.QueueSubject(keyOf("audited")), AckPolicy: jetstream.AckExplicitPolicy, InactiveThreshold: time.Hour, MemoryStorage: true,
	}); err != nil {
		t.Fatal(err)
	}
	for n := 1; ; n++ {
		_, err := standIn(n)
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
	// The oldest queue consumer runs a job now: a delivery and its ack.
	if _, err := js.Publish(ctx, broker.QueueSubject(oldTok), []byte("x")); err != nil {
		t.Fatal(err)
	}
	c, err := js.Consumer(ctx, broker.QueueStream, broker.ConsumerName(oldTok))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := c.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := msg.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}

	fresh, err := b.Store.Submit(ctx, &broker.Job{Model: model, Kind: broker.KindChat, Program: "new"}, []byte(`{"model":"`+model+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	d, err := b.Store.NextWait(ctx, keyOf("new"), arrival)
	if err != nil || d == nil || d.JobID != fresh.ID {
		t.Fatalf("a new queue's job at the consumer limit: %+v, %v; want it leased", d, err)
	}
	if _, err := js.Consumer(ctx, broker.QueueStream, broker.ConsumerName(oldTok)); err != nil {
		t.Errorf("the oldest consumer, active a moment ago: %v, want it kept", err)
	}
	if _, err := js.Consumer(ctx, broker.QueueStream, audit); err != nil {
		t.Errorf("a consumer that is no queue's: %v, want it kept", err)
	}
	for _, i := range []int{1, 2} {
		if _, err := js.Consumer(ctx, broker.QueueStream, broker.ConsumerName(keyOf(fmt.Sprintf("%s-%d", long, i)))); !errors.Is(err, jetstream.ErrConsumerNotFound) {
			t.Errorf("idle consumer %d: %v, want it deleted (room for more than one new queue)", i, err)
		}
	}
}
