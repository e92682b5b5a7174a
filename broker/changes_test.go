package broker_test

import (
	"context"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A change consumer deleted while no pull of it waits (its reader away longer than a
// pull's expiry: the server tells of the deletion only the pulls waiting then) is made
// again when its heartbeats stop, rather than missing heartbeats for good.
func TestChangeConsumerDeletedWhileNoPullWaits(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const expiry = time.Second
	c, err := b.Store.ConsumeChanges(ctx, broker.ChangeConsumerConfig{Durable: "changes", AckWait: 10 * time.Second, MaxAckPending: 16, PullExpiry: expiry})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	first := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	ch, err := c.Next()
	if err != nil || ch.JobID != first.ID {
		t.Fatalf("first change: %+v %v", ch, err)
	}
	if err := ch.Ack(); err != nil {
		t.Fatal(err)
	}
	// The reader is away for longer than a pull waits: once its last pull expired, none
	// waits when the consumer goes.
	cons, err := b.JetStream(t).Consumer(ctx, "KV_"+broker.JobsBucket, "changes")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "no pull waiting", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumWaiting == 0
	})
	if err := b.JetStream(t).DeleteConsumer(ctx, "KV_"+broker.JobsBucket, "changes"); err != nil {
		t.Fatal(err)
	}
	second := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	for {
		ch, err := c.Next()
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("the change after the deletion never came: %v", err)
			}
			continue // missed heartbeats, reported while the consumer is found gone
		}
		_ = ch.Ack()
		if ch.JobID == second.ID {
			return
		}
	}
}
