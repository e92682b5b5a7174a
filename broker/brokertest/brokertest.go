// Package brokertest starts a real embedded nats-server with a broker.Store on a temporary
// directory, for tests of every package that stands on the store. Never a mock of NATS.
package brokertest

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// Bundle is a running server, its in-process connection and the store on it.
type Bundle struct {
	Dir    string
	Server *natsd.Server
	Conn   *nats.Conn
	Store  *broker.Store
	cfg    broker.Config
	nats   natsd.Config
}

// Option adjusts the store or server configuration.
type Option func(*broker.Config, *natsd.Config)

// WithStore adjusts the store configuration.
func WithStore(fn func(*broker.Config)) Option {
	return func(c *broker.Config, _ *natsd.Config) { fn(c) }
}

// WithNATS adjusts the embedded server configuration.
func WithNATS(fn func(*natsd.Config)) Option {
	return func(_ *broker.Config, n *natsd.Config) { fn(n) }
}

// New starts a server on t.TempDir() and opens the store; both stop when the test ends.
func New(t testing.TB, opts ...Option) *Bundle {
	t.Helper()
	b := &Bundle{Dir: t.TempDir()}
	b.nats = natsd.Config{DataDir: b.Dir}
	for _, o := range opts {
		o(&b.cfg, &b.nats)
	}
	b.start(t)
	t.Cleanup(b.Stop)
	return b
}

func (b *Bundle) start(t testing.TB) {
	t.Helper()
	srv, err := natsd.Start(b.nats)
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	nc, err := srv.Connect()
	if err != nil {
		srv.Shutdown()
		t.Fatalf("connect nats: %v", err)
	}
	cfg := b.cfg
	cfg.Conn = nc
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := broker.Open(ctx, cfg)
	if err != nil {
		nc.Close()
		srv.Shutdown()
		t.Fatalf("open store: %v", err)
	}
	b.Server, b.Conn, b.Store = srv, nc, st
}

// Stop closes the connection and shuts the server down, as a crash-free stop would.
// Un-acked messages stay in the store. Safe to call twice.
func (b *Bundle) Stop() {
	if b.Conn != nil {
		b.Conn.Close()
		b.Conn = nil
	}
	if b.Server != nil {
		b.Server.Shutdown()
		b.Server = nil
	}
}

// Restart stops the server and starts a new one on the same directory, replacing Server,
// Conn and Store.
func (b *Bundle) Restart(t testing.TB) {
	t.Helper()
	b.Stop()
	b.start(t)
}

// RestartWith is Restart with the configuration adjusted by opts first, as an operator
// changing settings between two starts would.
func (b *Bundle) RestartWith(t testing.TB, opts ...Option) {
	t.Helper()
	for _, o := range opts {
		o(&b.cfg, &b.nats)
	}
	b.Restart(t)
}

// JetStream is a JetStream context on nc, for tests that look under a store opened on
// it (the store itself keeps NATS to itself).
func JetStream(t testing.TB, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// JobRecords is the job record bucket (broker.JobsBucket, keys "job.<id>") on nc.
func JobRecords(t testing.TB, nc *nats.Conn) jetstream.KeyValue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := JetStream(t, nc).KeyValue(ctx, broker.JobsBucket)
	if err != nil {
		t.Fatalf("job bucket: %v", err)
	}
	return kv
}

// JetStream is a JetStream context on the bundle's connection.
func (b *Bundle) JetStream(t testing.TB) jetstream.JetStream { return JetStream(t, b.Conn) }

// JobRecords is the job record bucket on the bundle's connection.
func (b *Bundle) JobRecords(t testing.TB) jetstream.KeyValue { return JobRecords(t, b.Conn) }

// PublishBare publishes job j's queue message as Store.Submit does, with no record: the
// half of a submit a worker may meet first (ADR-0031).
func (b *Bundle) PublishBare(t testing.TB, j *broker.Job, body string) {
	t.Helper()
	b.PublishQueueMsg(t, QueueMsg(t, j, body))
}

// QueueMsg is job j's queue message as Store.Submit makes it, for body: its message id
// makes the queue drop a copy within its duplicate window (delete it for a copy that
// stays).
func QueueMsg(t testing.TB, j *broker.Job, body string) *nats.Msg {
	t.Helper()
	key, err := broker.KeyOf(j, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg(broker.QueueSubject(key.String()))
	msg.Header.Set(broker.HeaderJobID, j.ID)
	msg.Header.Set(broker.HeaderPriority, string(key.Class))
	msg.Header.Set(broker.HeaderModel, j.Model)
	msg.Header.Set(broker.HeaderKind, string(j.Kind))
	msg.Header.Set(nats.MsgIdHdr, j.ID)
	msg.Data = []byte(body)
	return msg
}

// PublishQueueMsg publishes msg to the queue stream.
func (b *Bundle) PublishQueueMsg(t testing.TB, msg *nats.Msg) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.JetStream(t).PublishMsg(ctx, msg); err != nil {
		t.Fatalf("publish queue message: %v", err)
	}
}

// CreateRecord stores job j's queued record as Store.Submit does: the other half.
func (b *Bundle) CreateRecord(t testing.TB, j *broker.Job) {
	t.Helper()
	now := time.Now().UTC()
	j.State, j.CreatedAt, j.At = broker.StateQueued, now, now
	rec, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.JobRecords(t).Create(ctx, "job."+j.ID, rec); err != nil {
		t.Fatalf("create record: %v", err)
	}
}

// RemoveTarget deletes the entry of target name (a plain name: letters, digits, '-' and
// '_') from the targets bucket, as though its foreman's entry had lapsed.
func (b *Bundle) RemoveTarget(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := JetStream(t, b.Conn).KeyValue(ctx, broker.TargetsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "target."+name); err != nil {
		t.Fatal(err)
	}
}
