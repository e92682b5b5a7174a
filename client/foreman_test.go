package client_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/nats-io/nats.go"
	"log/slog"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// NATS client user of the test foremen.
const (
	natsUser     = "client"
	natsPassword = "client-secret"
)

// natsAuth logs in as the client user; the long timeout keeps a loaded CI machine from
// failing the handshake.
var natsAuth = []nats.Option{nats.UserInfo(natsUser, natsPassword), nats.Timeout(10 * time.Second)}

// foremanConfig shapes an in-process foreman.
type foremanConfig struct {
	AuthToken     string
	WebhookSecret string
	Fake          ollamatest.Config
	// NoNATSSubmit leaves foreman.jobs.submit without foreman's responder.
	NoNATSSubmit bool
	// DefaultWebhookPolicy keeps foreman's default webhook policy, which refuses loopback
	// receivers; otherwise loopback is opened (FOREMAN_WEBHOOK_ALLOW_NETS=127.0.0.0/8,::1/128)
	// as a deployment with clients on foreman's machine would.
	DefaultWebhookPolicy bool
}

// foreman is a complete in-process foreman (embedded NATS with a client listener, store,
// gateway, worker, webhook dispatcher, NATS submit responder) in front of a fake Ollama.
type foreman struct {
	URL     string // HTTP base URL
	NATSURL string // nats://host:port of the client listener
	Fake    *ollamatest.Server
	Store   *broker.Store
	Conn    *nats.Conn // foreman's in-process connection, under the store

	dir    string
	srv    *natsd.Server
	hs     *httptest.Server
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errs   chan error
}

// newForeman starts a foreman; Close stops it. Examples use it too, so it takes no *testing.T.
func newForeman(cfg foremanConfig) (_ *foreman, err error) {
	f := &foreman{errs: make(chan error, 8)}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	if f.dir, err = os.MkdirTemp("", "foreman-client-test-"); err != nil {
		return nil, err
	}
	f.srv, err = natsd.Start(natsd.Config{DataDir: f.dir, Listen: "127.0.0.1:0", ClientUser: natsUser, ClientPassword: natsPassword})
	if err != nil {
		return nil, err
	}
	f.NATSURL = f.srv.ClientURL()
	nc, err := f.srv.Connect()
	if err != nil {
		return nil, err
	}
	f.Conn = nc
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	if f.Store, err = broker.Open(ctx, broker.Config{Conn: nc}); err != nil {
		return nil, err
	}
	f.Fake = ollamatest.NewServer(cfg.Fake)
	target, err := ollama.NewClient(ollama.ClientConfig{BaseURL: f.Fake.URL, ResponseHeaderTimeout: -1})
	if err != nil {
		return nil, err
	}
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: target})
	if err := inv.Refresh(ctx); err != nil {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	policy := webhook.Policy{}
	if ep, err := webhook.EndpointOf(f.Fake.URL); err == nil {
		policy.Protected = []string{ep}
	}
	if !cfg.DefaultWebhookPolicy {
		if policy.AllowNets, err = webhook.ParseNets("127.0.0.0/8,::1/128"); err != nil {
			return nil, err
		}
	}
	gw, err := gateway.New(gateway.Config{Store: f.Store, Target: target, Inventory: inv, AuthToken: cfg.AuthToken, WebhookPolicy: policy, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	w, err := worker.New(worker.Config{Store: f.Store, Target: target, Inventory: inv, RetryDelay: 50 * time.Millisecond, IdlePoll: 100 * time.Millisecond})
	if err != nil {
		return nil, err
	}
	d, err := webhook.New(webhook.Config{Store: f.Store, Secret: cfg.WebhookSecret, BaseDelay: 50 * time.Millisecond, Policy: policy})
	if err != nil {
		return nil, err
	}
	f.run(func() error { return inv.Run(ctx) })
	f.run(func() error { return w.Run(ctx) })
	f.run(func() error { return d.Run(ctx) })
	if !cfg.NoNATSSubmit {
		f.run(func() error { return gw.RunNATSSubmit(ctx) })
	}
	f.hs = httptest.NewServer(gw)
	f.URL = f.hs.URL
	return f, nil
}

func (f *foreman) run(fn func() error) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		if err := fn(); err != nil && !errors.Is(err, context.Canceled) {
			f.errs <- err
		}
	}()
}

// Close stops everything, in serve's order: HTTP, background parts, NATS.
func (f *foreman) Close() {
	if f.hs != nil {
		f.hs.CloseClientConnections()
		f.hs.Close()
	}
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
	if f.Fake != nil {
		f.Fake.Close()
	}
	if f.srv != nil {
		f.srv.Shutdown()
	}
	if f.dir != "" {
		_ = os.RemoveAll(f.dir)
	}
}

// natsConn connects as the client user. The listener checks a bcrypt hash, which is slow
// under -race on a busy machine: the server's first PING can then beat the handshake, so
// connecting is retried.
func natsConn(t *testing.T, f *foreman) *nats.Conn {
	t.Helper()
	var err error
	for range 5 {
		var nc *nats.Conn
		if nc, err = nats.Connect(f.NATSURL, natsAuth...); err == nil {
			t.Cleanup(nc.Close)
			return nc
		}
	}
	t.Fatalf("connect to foreman's NATS: %v", err)
	return nil
}

// startForeman starts a foreman for one test.
func startForeman(t *testing.T, cfg foremanConfig) *foreman {
	t.Helper()
	f, err := newForeman(cfg)
	if err != nil {
		t.Fatalf("start foreman: %v", err)
	}
	t.Cleanup(func() {
		f.Close()
		select {
		case err := <-f.errs:
			t.Errorf("foreman component failed: %v", err)
		default:
		}
	})
	return f
}
