package natsd_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

const (
	clientUser = "watcher"
	clientPass = "s3cret"
)

func withListener(extra func(*natsd.Config)) brokertest.Option {
	return brokertest.WithNATS(func(c *natsd.Config) {
		c.Listen, c.ClientUser, c.ClientPassword = "127.0.0.1:0", clientUser, clientPass
		if extra != nil {
			extra(c)
		}
	})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// connectClient logs in over TCP; async errors (permission violations) go to errs.
func connectClient(t *testing.T, url string, opts ...nats.Option) (*nats.Conn, chan error) {
	t.Helper()
	errs := make(chan error, 16)
	opts = append([]nats.Option{
		nats.UserInfo(clientUser, clientPass),
		nats.Timeout(10 * time.Second), // bcrypt under -race on a busy machine is slow
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}),
	}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("client connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

func wantViolation(t *testing.T, errs chan error, what string) {
	t.Helper()
	select {
	case err := <-errs:
		if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Fatalf("%s: got %v, want a permissions violation", what, err)
		}
		if !strings.Contains(err.Error(), what) {
			t.Fatalf("violation %q is not about %s", err, what)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no permissions violation", what)
	}
}

func TestClientPermissions(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, withListener(nil))
	url := b.Server.ClientURL()
	if !strings.HasPrefix(url, "nats://") {
		t.Fatalf("ClientURL %q", url)
	}
	nc, errs := connectClient(t, url)
	ctx := ctxT(t)

	// Job events: allowed.
	events, err := nc.SubscribeSync(broker.StateWildcard)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	j, err := b.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	m, err := events.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ev, _ := broker.DecodeJob(m.Data); ev == nil || ev.ID != j.ID || ev.State != broker.StateQueued || m.Subject != broker.StateSubject(j.ID) {
		t.Fatalf("event %s on %s", m.Data, m.Subject)
	}

	// Request/reply submit: allowed (the internal user answers).
	resp, err := b.Conn.Subscribe(broker.SubmitSubject, func(m *nats.Msg) { _ = m.Respond([]byte(`{"job_id":"x"}`)) })
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Unsubscribe()
	_ = b.Conn.Flush()
	r, err := nc.RequestWithContext(ctx, broker.SubmitSubject, []byte(`{}`))
	if err != nil || string(r.Data) != `{"job_id":"x"}` {
		t.Fatalf("submit request: %v %v", err, r)
	}

	// Publishing into the queue: denied, and nothing arrives there.
	before, _ := b.Store.QueueLen(ctx)
	if err := nc.Publish("foreman.queue.mfuw4ltzfvqq", []byte(`{"model":"tiny-a"}`)); err != nil {
		t.Fatal(err)
	}
	wantViolation(t, errs, "foreman.queue.mfuw4ltzfvqq")
	if after, _ := b.Store.QueueLen(ctx); after != before {
		t.Fatalf("queue grew from %d to %d", before, after)
	}

	// The JetStream API: denied, so JetStream calls fail.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := js.Stream(sctx, broker.QueueStream); err == nil {
		t.Fatal("client read the queue stream through the JetStream API")
	}
	wantViolation(t, errs, "$JS.API")
	if _, err := js.Publish(sctx, "foreman.queue.x", []byte("x")); err == nil {
		t.Fatal("client published into the queue through JetStream")
	}

	// Publishing fake state events, or reading the KV stream directly: denied.
	_ = nc.Publish(broker.StateSubject(j.ID), []byte(`{"state":"done"}`))
	wantViolation(t, errs, "foreman.job.")
	if _, err := nc.SubscribeSync("$KV.FOREMAN_JOBS.>"); err != nil {
		t.Fatal(err)
	}
	wantViolation(t, errs, "$KV.FOREMAN_JOBS")
}

func TestClientLogins(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, withListener(nil))
	url := b.Server.ClientURL()
	if _, err := nats.Connect(url, nats.UserInfo(clientUser, "wrong")); err == nil {
		t.Fatal("wrong password accepted")
	}
	if _, err := nats.Connect(url); err == nil {
		t.Fatal("anonymous login accepted")
	}
	if _, err := nats.Connect(url, nats.UserInfo("foreman", "anything")); err == nil {
		t.Fatal("the internal user logged in over TCP")
	}
	// Without a listener there is no URL at all.
	if u := brokertest.New(t).Server.ClientURL(); u != "" {
		t.Fatalf("no listener, but ClientURL %q", u)
	}
}

func TestClientTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	b := brokertest.New(t, withListener(func(c *natsd.Config) { c.TLSCert, c.TLSKey = certFile, keyFile }))
	url := b.Server.ClientURL()

	if nc, err := nats.Connect(url, nats.UserInfo(clientUser, clientPass), nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Fatal("a client without TLS connected to a TLS listener")
	}
	nc, _ := connectClient(t, url, nats.Secure(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	sub, err := nc.SubscribeSync(broker.StateWildcard)
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	if !nc.TLSRequired() {
		if _, err := nc.TLSConnectionState(); err != nil {
			t.Fatalf("connection is not TLS: %v", err)
		}
	}
	ctx := ctxT(t)
	if _, err := b.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.NextMsgWithContext(ctx); err != nil {
		t.Fatalf("no event over TLS: %v", err)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns a pool trusting it.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "foreman test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// A client that names one of foreman's own subjects as the reply subject of a submit must
// not get foreman to publish there: the reply goes back through the service import to the
// client's account, never into the job bucket.
func TestForgedReplySubjectCannotWriteInternally(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, withListener(nil))
	ctx := ctxT(t)
	j, err := b.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	_, revBefore, err := b.Store.Get(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	answered := make(chan string, 1)
	resp, err := b.Conn.Subscribe(broker.SubmitSubject, func(m *nats.Msg) {
		answered <- m.Reply
		_ = m.Respond([]byte(`{"error":"invalid JSON body"}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Unsubscribe()
	if err := b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	nc, _ := connectClient(t, b.Server.ClientURL())
	forged := "$KV." + broker.JobsBucket + ".job." + j.ID
	if err := nc.PublishRequest(broker.SubmitSubject, forged, []byte(`not json`)); err != nil {
		t.Fatal(err)
	}
	select {
	case reply := <-answered:
		if reply == forged {
			t.Fatalf("foreman saw the forged reply subject %q", reply)
		}
	case <-ctx.Done():
		t.Fatal("submit never reached foreman")
	}
	if err := b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	got, revAfter, err := b.Store.Get(ctx, j.ID)
	if err != nil || revAfter != revBefore || got.State != broker.StateQueued {
		t.Fatalf("job record changed by a forged reply: %+v rev %d→%d (%v)", got, revBefore, revAfter, err)
	}
}

// A client may subscribe to _INBOX.> for its own replies, but foreman's internal
// request/reply traffic (JetStream API answers, KV reads, request bodies) is in another
// account and never reaches it.
func TestClientInboxDoesNotSeeInternalTraffic(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, withListener(nil))
	ctx := ctxT(t)
	nc, _ := connectClient(t, b.Server.ClientURL())
	inbox, err := nc.SubscribeSync("_INBOX.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// Internal traffic: a submit and reads, each a JetStream request with an inbox reply.
	j, err := b.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"SECRET-PROMPT"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Store.Get(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	// Anything routed to the client before this round trip is already in its pending queue.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := inbox.Pending(); n != 0 {
		m, _ := inbox.NextMsg(time.Second)
		t.Fatalf("client inbox saw %d internal messages, first on %s: %.80s", n, m.Subject, m.Data)
	}
	// The subscription itself works: the client's own request reply arrives on it.
	resp, err := b.Conn.Subscribe(broker.SubmitSubject, func(m *nats.Msg) { _ = m.Respond([]byte(`{"job_id":"x"}`)) })
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Unsubscribe()
	_ = b.Conn.Flush()
	if _, err := nc.RequestWithContext(ctx, broker.SubmitSubject, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := inbox.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("the client's own reply never reached its _INBOX.> subscription: %v", err)
	}
}

// A client may log in with an nkey instead of a password, with the same rights; another
// key is refused, and a malformed public key is a configuration error.
func TestClientNkey(t *testing.T) {
	t.Parallel()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	b := brokertest.New(t, brokertest.WithNATS(func(c *natsd.Config) {
		c.Listen, c.ClientNkey = "127.0.0.1:0", pub
	}))
	withKey := func(k nkeys.KeyPair) nats.Option {
		p, _ := k.PublicKey()
		return nats.Nkey(p, k.Sign)
	}
	nc, err := nats.Connect(b.Server.ClientURL(), withKey(kp), nats.Timeout(10*time.Second))
	if err != nil {
		t.Fatalf("nkey login: %v", err)
	}
	defer nc.Close()
	events, err := nc.SubscribeSync(broker.StateWildcard)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	j, err := b.Store.Submit(ctxT(t), &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	if m, err := events.NextMsgWithContext(ctxT(t)); err != nil || m.Subject != broker.StateSubject(j.ID) {
		t.Fatalf("event over the nkey login: %v %v", m, err)
	}
	other, _ := nkeys.CreateUser()
	if nc2, err := nats.Connect(b.Server.ClientURL(), withKey(other), nats.Timeout(10*time.Second)); err == nil {
		nc2.Close()
		t.Fatal("another nkey logged in")
	}
	if _, err := natsd.Start(natsd.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", ClientNkey: "SUAFAKE"}); err == nil || !strings.Contains(err.Error(), "FOREMAN_NATS_NKEY") {
		t.Fatalf("malformed nkey: %v, want an error naming FOREMAN_NATS_NKEY", err)
	}
}

// When the server's first PING comes ahead of the PONG that ends the handshake (a server
// too busy to answer the CONNECT within its first ping interval), the in-process connect
// tries again instead of failing foreman's start.
func TestConnectTriesAgainAfterAnEarlyPing(t *testing.T) {
	srv, err := natsd.Start(natsd.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	opened := srv.PingFirst(2)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatalf("connect after two early PINGs: %v", err)
	}
	defer nc.Close()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := opened(); n != 3 {
		t.Fatalf("connections opened = %d; want 3 (two refused, one kept)", n)
	}

	srv.PingFirst(3)
	if _, err := srv.Connect(); err == nil || !strings.Contains(err.Error(), "expected 'PONG', got 'PING'") {
		t.Fatalf("connect after three early PINGs: %v; want nats.go's handshake error", err)
	}
}

// An in-process connect waits for the server's first answer as long as start-up waits
// for the server (Config.ReadyTimeout), not nats.go's 2 s default: on a machine so busy
// that the answer takes longer, foreman still starts.
func TestConnectWaitsReadyTimeoutForTheFirstAnswer(t *testing.T) {
	t.Parallel()
	srv, err := natsd.Start(natsd.Config{DataDir: t.TempDir(), ReadyTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	srv.SlowFirstAnswer(2500 * time.Millisecond) // past nats.go's default of 2 s
	nc, err := srv.Connect()
	if err != nil {
		t.Fatalf("connect to a server answering after 2.5 s, ReadyTimeout 30 s: %v", err)
	}
	defer nc.Close()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}
