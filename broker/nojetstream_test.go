package broker_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// On a nats-server started without JetStream, every JetStream request has no
// responders, as on a cluster electing; Open used to wait for it until its context
// ended. It fails within seconds (a leaf node's hub may be out of reach only for a
// moment), saying what is missing.
func TestOpenWithoutJetStream(t *testing.T) {
	t.Parallel()
	ns := startServer(t, &server.Options{Host: "127.0.0.1", Port: -1})
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	// Only bounds a start that would wait forever: it must not be reached.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := broker.Open(ctx, broker.Config{Conn: nc})
	if err == nil {
		t.Fatalf("opened a store on a server without JetStream: %v", st)
	}
	if !errors.Is(err, broker.ErrNoJetStream) || errors.Is(err, context.DeadlineExceeded) || broker.Transient(err) {
		t.Fatalf("open: %v, want ErrNoJetStream before the context ends", err)
	}
}

// A server without JetStream in a cluster whose other servers run it hands its JetStream
// API to them: "no responders" there says they are not reached yet (or are electing a
// leader), not that there is no JetStream. Open waits for them, as on a cluster electing,
// and opens once one has joined.
func TestOpenOnAClusterServerWithoutJetStream(t *testing.T) {
	if testing.Short() {
		t.Skip("3-server cluster; skipped with -short")
	}
	t.Parallel()
	cluster := server.ClusterOpts{Name: "mixed", Host: "127.0.0.1", Port: -1}
	plain := startServer(t, &server.Options{ServerName: "plain", Host: "127.0.0.1", Port: -1, Cluster: cluster})
	nc, err := nats.Connect(plain.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	waited := make(chan string, 1)
	log := slogFunc(func(msg string, attrs map[string]string) {
		if strings.HasPrefix(msg, "waiting for the NATS cluster") {
			select {
			case waited <- attrs["err"]:
			default:
			}
		}
	})
	opened := make(chan error, 1)
	go func() {
		_, err := broker.Open(ctx, broker.Config{Conn: nc, Logger: log})
		opened <- err
	}()
	select {
	case why := <-waited:
		if !strings.Contains(why, `runs without JetStream: waiting for those of its cluster "mixed"`) {
			t.Errorf("the wait's log line says %q, not what it waits for", why)
		}
	case err := <-opened:
		t.Fatalf("open ended without waiting for the cluster: %v", err)
	}
	// Two servers that run JetStream join the cluster (each expects one peer, so that
	// together they elect a meta leader): their answers reach Open.
	for _, name := range []string{"js1", "js2"} {
		startServer(t, &server.Options{ServerName: name, Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
			Cluster: cluster, Routes: server.RoutesFromStr("nats://" + plain.ClusterAddr().String())})
	}
	if err := <-opened; err != nil {
		t.Fatalf("open once JetStream servers joined: %v", err)
	}
}

// startServer starts an in-process nats-server of opts, shut down when the test ends.
func startServer(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	opts.NoSigs, opts.NoLog = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(30 * time.Second) {
		t.Fatalf("nats-server %s not ready", opts.ServerName)
	}
	return ns
}

// Three replicas on a cluster of two: the server answers "no suitable peers", as a
// cluster still forming does, so Open waits; its log line and its error when the wait
// ends name FOREMAN_NATS_REPLICAS.
func TestOpenMoreReplicasThanServers(t *testing.T) {
	if testing.Short() {
		t.Skip("2-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The first wait logged ends the start: cancelled before its pause begins, so the
	// error is the server's answer and not a request cut short.
	var logged string
	log := slogFunc(func(msg string, attrs map[string]string) {
		if strings.HasPrefix(msg, "waiting for the NATS cluster") && logged == "" {
			logged = attrs["err"]
			cancel()
		}
	})
	_, err := broker.Open(ctx, broker.Config{Conn: c.Connect(t), Replicas: 3, Logger: log})
	if logged == "" {
		t.Fatalf("open ended without waiting: %v", err)
	}
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != 10005 {
		t.Fatalf("open: %v, want the server's no suitable peers (10005)", err)
	}
	for what, s := range map[string]string{"log line": logged, "error": err.Error()} {
		if !strings.Contains(s, "FOREMAN_NATS_REPLICAS=3:") {
			t.Errorf("%s %q does not name FOREMAN_NATS_REPLICAS and its value", what, s)
		}
	}
}

// slogFunc is a logger that hands each record's message and attributes to fn.
func slogFunc(fn func(msg string, attrs map[string]string)) *slog.Logger {
	return slog.New(funcHandler(fn))
}

type funcHandler func(msg string, attrs map[string]string)

func (funcHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h funcHandler) Handle(_ context.Context, r slog.Record) error {
	attrs := map[string]string{}
	r.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.String(); return true })
	h(r.Message, attrs)
	return nil
}
func (h funcHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h funcHandler) WithGroup(string) slog.Handler      { return h }
