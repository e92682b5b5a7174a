package natsd_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
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
// event cross the network in clear.
func TestCleartextListenerWarns(t *testing.T) {
	t.Parallel()
	certFile, keyFile, _ := selfSigned(t, t.TempDir())
	// The listener must not come up anywhere but on loopback: the other address is one
	// this host does not have, so that Start fails to listen there (after its warning).
	const elsewhere = "192.0.2.1" // TEST-NET-1
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(net.ParseIP(elsewhere)) {
			t.Skipf("this host has %s", elsewhere)
		}
	}
	for _, c := range []struct {
		name   string
		listen string
		tls    bool
		want   string // in the warning; "" for none
	}{
		{"not loopback, no TLS", elsewhere + ":0", false, "FOREMAN_NATS_PASSWORD and every job's prompts and answers cross the network in clear"},
		{"not loopback, TLS", elsewhere + ":0", true, ""},
		{"loopback, no TLS", "127.0.0.1:0", false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			logs := &warnings{}
			cfg := natsd.Config{DataDir: t.TempDir(), Listen: c.listen, ClientUser: clientUser, ClientPassword: clientPass,
				Logger: slog.New(logs)}
			if c.tls {
				cfg.TLSCert, cfg.TLSKey = certFile, keyFile
			}
			srv, err := natsd.Start(cfg)
			if err == nil {
				srv.Shutdown()
			}
			if err == nil && c.listen != "127.0.0.1:0" {
				t.Fatalf("listened on %s", c.listen)
			}
			got := logs.with("INSECURE")
			switch {
			case c.want == "" && len(got) > 0:
				t.Fatalf("warned: %q", got)
			case c.want != "" && (len(got) != 1 || !strings.Contains(got[0], c.want) || !strings.Contains(got[0], c.listen)):
				t.Fatalf("warnings %q, want one naming %s and saying %q", got, c.listen, c.want)
			}
		})
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
