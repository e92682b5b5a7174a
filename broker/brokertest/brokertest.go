// Package brokertest starts a real embedded nats-server with a broker.Store on a temporary
// directory, for tests of every package that stands on the store. Never a mock of NATS.
package brokertest

import (
	"context"
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
