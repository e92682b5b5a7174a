package natsd_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// Each subscription matching a job event is a copy the server makes as the event is
// stored: a client may hold only so many, and its account only so many connections.
func TestClientAccountLimits(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, withListener(nil))
	wantClientLimits(t, b.Server.ClientURL(), clientUser, clientPass, true)
}

// wantClientLimits checks that a client of url may hold natsd.ClientMaxSubs subscriptions
// and no more and, with conns, that its account may have natsd.ClientMaxConns connections
// and no more.
func wantClientLimits(t *testing.T, url, user, pass string, conns bool) {
	t.Helper()
	nc, errs := connectClient(t, url, nats.UserInfo(user, pass))
	for i := range natsd.ClientMaxSubs {
		if _, err := nc.Subscribe(broker.StateSubject(fmt.Sprintf("job%d", i)), func(*nats.Msg) {}); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		t.Fatalf("%d subscriptions: %v", natsd.ClientMaxSubs, err)
	default:
	}
	if _, err := nc.Subscribe(broker.StateWildcard, func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if !strings.Contains(strings.ToLower(err.Error()), "maximum subscriptions exceeded") {
			t.Fatalf("subscription %d: %v, want maximum subscriptions exceeded", natsd.ClientMaxSubs+1, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("subscription %d was not refused", natsd.ClientMaxSubs+1)
	}
	if !conns {
		return
	}
	for i := 1; i < natsd.ClientMaxConns; i++ { // nc is the first
		connectClient(t, url, nats.UserInfo(user, pass))
	}
	extra, err := nats.Connect(url, nats.UserInfo(user, pass), nats.Timeout(10*time.Second))
	if err == nil {
		extra.Close()
		t.Fatalf("connection %d accepted", natsd.ClientMaxConns+1)
	}
	if !strings.Contains(strings.ToLower(err.Error()), "maximum account active connections exceeded") {
		t.Fatalf("connection %d: %v, want maximum account active connections exceeded", natsd.ClientMaxConns+1, err)
	}
}

// A listener others can reach without TLS is warned of: the password and every job
// event cross the network in clear. The listeners off loopback are checked without being
// bound (a host may bind any address: net.ipv4.ip_nonlocal_bind).
func TestCleartextListenerWarns(t *testing.T) {
	t.Parallel()
	const clear = "every job's prompts and answers cross the network in clear"
	for _, c := range []struct {
		name   string
		listen string
		tls    bool
		nkey   bool
		want   string // in the warning; "" for none
	}{
		{"not loopback, no TLS", "192.0.2.1:4222", false, false, "FOREMAN_NATS_PASSWORD and " + clear},
		{"every interface, no TLS", "0.0.0.0:4222", false, false, "FOREMAN_NATS_PASSWORD and " + clear},
		{"no host, no TLS", ":4222", false, false, "FOREMAN_NATS_PASSWORD and " + clear},
		{"a host name, no TLS", "nats.example.com:4222", false, false, "FOREMAN_NATS_PASSWORD and " + clear},
		{"not loopback, nkey, no TLS", "192.0.2.1:4222", false, true, "FOREMAN_NATS_TLS_KEY): " + clear}, // no password to cross
		{"not loopback, TLS", "192.0.2.1:4222", true, false, ""},
		{"loopback", "127.0.0.1:4222", false, false, ""},
		{"loopback IPv6", "[::1]:4222", false, false, ""},
		{"localhost", "localhost:4222", false, false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			logs := &warnings{}
			cfg := natsd.Config{Listen: c.listen, ClientUser: clientUser, ClientPassword: clientPass, Logger: slog.New(logs)}
			if c.tls {
				cfg.TLSCert, cfg.TLSKey = "cert.pem", "key.pem"
			}
			if c.nkey {
				cfg.ClientUser, cfg.ClientPassword, cfg.ClientNkey = "", "", "UNKEY"
			}
			natsd.WarnCleartext(cfg)
			wantWarning(t, logs, c.listen, c.want)
		})
	}

	// Start gives the warning, before it touches anything: a start that then fails on
	// its data directory warns, and listens nowhere.
	t.Run("start off loopback", func(t *testing.T) {
		t.Parallel()
		file := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		logs := &warnings{}
		srv, err := natsd.Start(natsd.Config{DataDir: filepath.Join(file, "data"), Listen: "192.0.2.1:0",
			ClientUser: clientUser, ClientPassword: clientPass, Logger: slog.New(logs)})
		if err == nil {
			srv.Shutdown()
			t.Fatal("started on a data directory under a file")
		}
		wantWarning(t, logs, "192.0.2.1:0", "FOREMAN_NATS_PASSWORD and "+clear)
	})
	t.Run("start on loopback", func(t *testing.T) {
		t.Parallel()
		logs := &warnings{}
		srv, err := natsd.Start(natsd.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0",
			ClientUser: clientUser, ClientPassword: clientPass, Logger: slog.New(logs)})
		if err != nil {
			t.Fatal(err)
		}
		srv.Shutdown()
		wantWarning(t, logs, "127.0.0.1:0", "")
	})
}

// wantWarning checks that logs hold one INSECURE warning naming listen and saying want,
// or none when want is "".
func wantWarning(t *testing.T, logs *warnings, listen, want string) {
	t.Helper()
	got := logs.with("INSECURE")
	switch {
	case want == "" && len(got) > 0:
		t.Fatalf("warned: %q", got)
	case want != "" && (len(got) != 1 || !strings.Contains(got[0], want) || !strings.Contains(got[0], "="+listen+" ")):
		t.Fatalf("warnings %q, want one naming %s and saying %q", got, listen, want)
	}
}

// warnings is a slog handler that keeps the messages of warnings and errors.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, r.Message)
	return nil
}
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnings) WithGroup(string) slog.Handler      { return w }

// with returns the messages that start with prefix.
func (w *warnings) with(prefix string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var got []string
	for _, m := range w.msgs {
		if strings.HasPrefix(m, prefix) {
			got = append(got, m)
		}
	}
	return got
}
