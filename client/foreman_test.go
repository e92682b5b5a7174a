package client_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
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
	// MaxQueue bounds the queue (0: foreman's default).
	MaxQueue int
	// DefaultWebhookPolicy keeps foreman's default webhook policy, which refuses loopback
	// receivers; otherwise loopback is opened (FOREMAN_WEBHOOK_ALLOW_NETS=127.0.0.0/8,::1/128)
	// as a deployment with clients on foreman's machine would.
	DefaultWebhookPolicy bool
}

// foreman is a complete in-process foreman, started as serve starts it (app.Start:
// embedded NATS with a client listener, store, gateway, worker, webhook dispatcher, NATS
// submit responder) in front of a fake Ollama.
type foreman struct {
	URL     string // HTTP base URL
	NATSURL string // nats://host:port of the client listener
	Fake    *ollamatest.Server
	Store   *broker.Store
	Conn    *nats.Conn // foreman's in-process connection, under the store

	dir string
	app *app.App
}

// newForeman starts a foreman; Close stops it. Examples use it too, so it takes no *testing.T.
func newForeman(cfg foremanConfig) (_ *foreman, err error) {
	f := &foreman{}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	if f.dir, err = os.MkdirTemp("", "foreman-client-test-"); err != nil {
		return nil, err
	}
	f.Fake = ollamatest.NewServer(cfg.Fake)
	acfg := app.Config{
		Addr: "127.0.0.1:0", OllamaURL: f.Fake.URL, DataDir: f.dir,
		NATSListen: "127.0.0.1:0", NATSUser: natsUser, NATSPassword: natsPassword,
		AuthToken: cfg.AuthToken, WebhookSecret: cfg.WebhookSecret, MaxQueue: cfg.MaxQueue,
		Components: app.Components{
			// No test here is about the store's retry window: on a machine so loaded that
			// a write takes seconds (a CI host), a submit waits instead of failing 503.
			Store: func(c *broker.Config) { c.RetryWindow = 30 * time.Second },
			Worker: func(c *worker.Config) {
				c.RetryDelay, c.IdlePoll = 50*time.Millisecond, 100*time.Millisecond
			},
			Webhooks:     func(c *webhook.Config) { c.BaseDelay = 50 * time.Millisecond },
			NoNATSSubmit: cfg.NoNATSSubmit,
		},
	}
	if !cfg.DefaultWebhookPolicy {
		if acfg.WebhookAllowNets, err = webhook.ParseNets("127.0.0.0/8,::1/128"); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if f.app, err = app.Start(ctx, acfg, slog.New(slog.DiscardHandler)); err != nil {
		return nil, err
	}
	// The first poll, done now: tests start with the fake's models known. A poll that
	// ran out its bound on a starved machine (the fake never refuses one) is tried again.
	for {
		err := f.app.Inventory().Refresh(ctx)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("inventory: %w", err)
		case <-time.After(100 * time.Millisecond): // a poll refused at once is not tried in a spin
		}
	}
	f.URL, f.NATSURL, f.Store, f.Conn = "http://"+f.app.Addr(), f.app.NATSListen(), f.app.Store(), f.app.Conn()
	return f, nil
}

// Close stops foreman as serve does (app.Shutdown), then the fake.
func (f *foreman) Close() {
	if f.app != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = f.app.Shutdown(ctx)
		cancel()
	}
	if f.Fake != nil {
		f.Fake.Close()
	}
	if f.dir != "" {
		_ = os.RemoveAll(f.dir)
	}
}

// failed returns the error of a foreman part that stopped on its own, nil if none did
// (a part that only saw its context end stopped because Close stopped it).
func (f *foreman) failed() error {
	if f.app == nil {
		return nil
	}
	for {
		select {
		case err := <-f.app.Failed():
			if !errors.Is(err, context.Canceled) {
				return err
			}
		default:
			return nil
		}
	}
}

// natsConn connects as the client user, with nats.go's opts besides. The listener checks
// a bcrypt hash, which is slow under -race on a busy machine: the server's first PING can
// then beat the handshake, so connecting is retried.
func natsConn(t *testing.T, f *foreman, opts ...nats.Option) *nats.Conn {
	t.Helper()
	var err error
	for range 5 {
		var nc *nats.Conn
		if nc, err = nats.Connect(f.NATSURL, slices.Concat(natsAuth, opts)...); err == nil {
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
		if err := f.failed(); err != nil {
			t.Errorf("foreman component failed: %v", err)
		}
	})
	return f
}
