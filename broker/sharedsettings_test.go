package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// On a shared NATS a foreman started with lower settings than the others' does not lower
// them for all: a shorter ack wait had the others' running jobs delivered again (run
// twice), a smaller queue bound refused their submits, a shorter job TTL cut their
// records short. It keeps what it finds, and raises what is lower than its own.
func TestSharedNATSSettingsAreOnlyRaised(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) {
		c.JobTTL, c.MaxQueue, c.AckWait = 10*time.Hour, 1000, 10*time.Minute
	}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	first, err := b.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	key, err := broker.KeyOf(first, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := b.Store.Next(ctx, key.String()); err != nil || d == nil {
		t.Fatalf("fetch: %v, %v", d, err)
	}

	nc, err := b.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	low, err := broker.Open(ctx, broker.Config{Conn: nc, JobTTL: time.Hour, MaxQueue: 2, AckWait: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 { // the others' bound is 1000: none is refused
		_, err := low.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
		if err != nil {
			t.Fatalf("submit past this foreman's own bound of 2: %v", err)
		}
		if _, err := low.Next(ctx, key.String()); err != nil { // this foreman's consumer of the queue
			t.Fatal(err)
		}
	}
	// It keeps, expires and judges the jobs by the TTL in force, not its own shorter one.
	if ttl := low.JobTTL(); ttl != 10*time.Hour {
		t.Errorf("the job TTL in force at the foreman started with 1h: %v, want 10h", ttl)
	}
	js := brokertest.JetStream(t, nc)
	for _, name := range []string{broker.QueueStream, "KV_" + broker.JobsBucket, "OBJ_" + broker.ArtifactsBucket} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if age := st.CachedInfo().Config.MaxAge; age != 10*time.Hour {
			t.Errorf("stream %s max age %v, want the 10h kept", name, age)
		}
	}
	q, err := js.Stream(ctx, broker.QueueStream)
	if err != nil {
		t.Fatal(err)
	}
	if n := q.CachedInfo().Config.MaxMsgs; n != 1000 {
		t.Errorf("queue bound %d, want the 1000 kept", n)
	}
	c, err := q.Consumer(ctx, broker.ConsumerName(key.String()))
	if err != nil {
		t.Fatal(err)
	}
	if w := c.CachedInfo().Config.AckWait; w != 10*time.Minute {
		t.Errorf("queue consumer ack wait %v, want the 10m kept", w)
	}

	// A foreman with higher settings raises them.
	high, err := broker.Open(ctx, broker.Config{Conn: nc, JobTTL: 20 * time.Hour, MaxQueue: 5000, AckWait: 20 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := high.Next(ctx, key.String()); err != nil {
		t.Fatal(err)
	}
	q, err = js.Stream(ctx, broker.QueueStream)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := q.CachedInfo().Config; cfg.MaxAge != 20*time.Hour || cfg.MaxMsgs != 5000 {
		t.Errorf("queue after a foreman with higher settings: max age %v, bound %d; want 20h, 5000", cfg.MaxAge, cfg.MaxMsgs)
	}
	c, err = q.Consumer(ctx, broker.ConsumerName(key.String()))
	if err != nil {
		t.Fatal(err)
	}
	if w := c.CachedInfo().Config.AckWait; w != 20*time.Minute {
		t.Errorf("queue consumer ack wait %v, want 20m", w)
	}
	// The foremen started before learn the raised TTL at their next look.
	if err := low.RefreshLimits(ctx); err != nil {
		t.Fatal(err)
	}
	if ttl := low.JobTTL(); ttl != 20*time.Hour {
		t.Errorf("the job TTL in force after another foreman raised it: %v, want 20h", ttl)
	}
	// An operator lowering it on the stream: the foremen expire by the queue's max age,
	// before JetStream drops the waiting jobs, not by their own longer one.
	qcfg := q.CachedInfo().Config
	qcfg.MaxAge = 2 * time.Hour
	if _, err := js.UpdateStream(ctx, qcfg); err != nil {
		t.Fatal(err)
	}
	if err := high.RefreshLimits(ctx); err != nil {
		t.Fatal(err)
	}
	if ttl := high.JobTTL(); ttl != 2*time.Hour {
		t.Errorf("the job TTL in force after the stream was lowered: %v, want 2h", ttl)
	}
}

// The embedded server's foreman is alone on it: its settings apply as configured, a lower
// queue bound after a restart too.
func TestExclusiveStoreSetsItsOwnSettings(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 1000 }))
	nc, err := b.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := broker.Open(ctx, broker.Config{Conn: nc, MaxQueue: 10, Exclusive: true}); err != nil {
		t.Fatal(err)
	}
	var q jetstream.Stream
	if q, err = brokertest.JetStream(t, nc).Stream(ctx, broker.QueueStream); err != nil {
		t.Fatal(err)
	}
	if n := q.CachedInfo().Config.MaxMsgs; n != 10 {
		t.Fatalf("queue bound %d, want the exclusive store's 10", n)
	}
}
