package brokertest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// Outage is a store on a plain nats-server with JetStream (a shared NATS, as with
// FOREMAN_NATS_URL) reached through a Proxy, on a connection that reconnects quickly: Cut
// takes the server away as an outage does, until Heal. The connection buffers nothing
// while cut off, so every NATS call fails at once meanwhile and none is sent late, at
// the reconnect.
type Outage struct {
	Store *broker.Store
	Conn  *nats.Conn
	proxy *Proxy
	// down and up tell of the connection's loss and its reconnect.
	down, up chan struct{}
}

// NewOutage starts the server on t.TempDir() and opens the store on it (one replica),
// adjusted by adjust; everything stops when the test ends.
func NewOutage(t testing.TB, adjust func(*broker.Config)) *Outage {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(30 * time.Second) {
		t.Fatal("nats-server not ready within 30s")
	}
	o := &Outage{proxy: NewProxy(t, ns.Addr().String()), down: make(chan struct{}, 1), up: make(chan struct{}, 1)}
	t.Cleanup(o.proxy.Close)
	signal := func(ch chan struct{}) {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	o.Conn, err = nats.Connect("nats://"+o.proxy.Addr(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond),
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(*nats.Conn, error) { signal(o.down) }),
		nats.ReconnectHandler(func(*nats.Conn) { signal(o.up) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.Conn.Close)
	cfg := broker.Config{Conn: o.Conn, Replicas: 1}
	if adjust != nil {
		adjust(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if o.Store, err = broker.Open(ctx, cfg); err != nil {
		t.Fatalf("open store: %v", err)
	}
	return o
}

// Cut takes the server away and waits until the connection knows it.
func (o *Outage) Cut(t testing.TB) {
	t.Helper()
	o.proxy.Pause()
	o.wait(t, o.down, "the connection's loss")
}

// Heal lets the server be reached again and waits until the connection is back.
func (o *Outage) Heal(t testing.TB) {
	t.Helper()
	o.proxy.Resume()
	o.wait(t, o.up, "the reconnect")
}

func (o *Outage) wait(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("waited 30s for %s", what)
	}
}
