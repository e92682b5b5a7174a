package client_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// TestWebhookUnspecifiedListenHost: a receiver listening on all interfaces advertises a
// loopback address to a loopback foreman, never "0.0.0.0" or "[::]".
func TestWebhookUnspecifiedListenHost(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{WebhookSecret: testSecret})
	for _, addr := range []string{":0", "0.0.0.0:0", "[::]:0"} {
		t.Run(addr, func(t *testing.T) {
			t.Parallel()
			if ln, err := net.Listen("tcp", addr); err != nil {
				t.Skipf("cannot listen on %s here: %v", addr, err)
			} else {
				ln.Close()
			}
			c := newClient(t, f.URL, client.WithWebhookListenAddr(addr), client.WithWebhookSecret(testSecret), client.WithPollInterval(never))
			var hookURL string
			client.SetOnWebhookListen(c, func(u string) { hookURL = u })
			res, err := c.Submit(testCtx(t), chatJob("tiny-a", "any interface"))
			if err != nil {
				t.Fatalf("Submit: %v", err)
			}
			u, err := url.Parse(hookURL)
			if err != nil || hookURL == "" {
				t.Fatalf("receiver URL %q: %v", hookURL, err)
			}
			if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
				t.Errorf("receiver advertised as %s; want a loopback address", hookURL)
			}
			rec, _, err := f.Store.Get(testCtx(t), res.Job.ID)
			if err != nil || rec.Webhook == nil || rec.Webhook.URL != hookURL {
				t.Fatalf("job webhook = %+v, %v; want %s", rec.Webhook, err, hookURL)
			}
		})
	}
}

// TestWebhookUnspecifiedListenHostIPv6: a receiver listening dual-stack (on "" or "::")
// for a foreman reached at [::1] is advertised at [::1], the family foreman's URL uses,
// not at 127.0.0.1; one listening on "0.0.0.0" (IPv4 only) stays at 127.0.0.1. The
// client reaches foreman through a dialer to its test listener, so only the receiver's
// own address is IPv6.
func TestWebhookUnspecifiedListenHostIPv6(t *testing.T) {
	t.Parallel()
	if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	} else {
		ln.Close()
	}
	f := startForeman(t, foremanConfig{WebhookSecret: testSecret})
	u, err := url.Parse(f.URL)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", u.Host)
		},
	}}
	t.Cleanup(hc.CloseIdleConnections)
	base := "http://[::1]:" + u.Port()
	for addr, want := range map[string]string{":0": "::1", "[::]:0": "::1", "0.0.0.0:0": "127.0.0.1"} {
		t.Run(addr, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, base, client.WithHTTPClient(hc), client.WithWebhookListenAddr(addr),
				client.WithWebhookSecret(testSecret), client.WithPollInterval(never))
			var hookURL string
			client.SetOnWebhookListen(c, func(u string) { hookURL = u })
			res, err := c.Submit(testCtx(t), chatJob("tiny-a", "dual stack "+addr))
			if err != nil {
				t.Fatalf("Submit: %v", err)
			}
			hu, err := url.Parse(hookURL)
			if err != nil || hu.Hostname() != want {
				t.Fatalf("receiver advertised as %q (%v); want host %s", hookURL, err, want)
			}
			rec, _, err := f.Store.Get(testCtx(t), res.Job.ID)
			if err != nil || rec.Webhook == nil || rec.Webhook.URL != hookURL {
				t.Fatalf("job webhook = %+v, %v; want %s", rec.Webhook, err, hookURL)
			}
		})
	}
}

// remoteBase makes foreman look remote: the client talks to a non-loopback host name that
// its HTTP client dials to the test foreman. The name is a private-network one (.internal),
// which foreman's DNS-rebinding check on a loopback listener lets through, as it would a
// name on the LAN.
func remoteBase(t *testing.T, f *foreman) (string, client.Option) {
	t.Helper()
	u, err := url.Parse(f.URL)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, u.Host)
		},
	}}
	t.Cleanup(hc.CloseIdleConnections)
	return "http://foreman.example.internal:" + u.Port(), client.WithHTTPClient(hc)
}

// TestWebhookNoReachableAddress: with foreman on another machine, a receiver on all
// interfaces or on loopback has no address foreman is known to reach: Submit registers no
// webhook and polls.
func TestWebhookNoReachableAddress(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	for _, addr := range []string{":0", "0.0.0.0:0", "127.0.0.1:0"} {
		t.Run(addr, func(t *testing.T) {
			t.Parallel()
			base, hc := remoteBase(t, f)
			c := newClient(t, base, hc, client.WithWebhookListenAddr(addr), client.WithPollInterval(20*time.Millisecond))
			var hookURL string
			client.SetOnWebhookListen(c, func(u string) { hookURL = u })
			res, err := c.Submit(testCtx(t), chatJob("tiny-a", "remote "+addr))
			if err != nil {
				t.Fatalf("Submit: %v", err)
			}
			if hookURL != "" {
				t.Errorf("a receiver was started and advertised as %s", hookURL)
			}
			rec, _, err := f.Store.Get(testCtx(t), res.Job.ID)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Webhook != nil {
				t.Errorf("job has webhook %+v; foreman can never reach it", rec.Webhook)
			}
		})
	}
}

// TestWebhookURL: WithWebhookURL is the address foreman calls, here a reverse proxy that
// keeps its path prefix, in front of a receiver on loopback; foreman looks remote, so
// nothing but the public URL could work.
func TestWebhookURL(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{WebhookSecret: testSecret})
	var (
		mu     sync.Mutex
		target string // the receiver's listen address, known once it is bound
		hits   atomic.Int32
	)
	proxy := httptest.NewServer(wholeBody(&httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		hits.Add(1)
		mu.Lock()
		defer mu.Unlock()
		r.SetURL(&url.URL{Scheme: "http", Host: target})
	}}))
	t.Cleanup(proxy.Close)
	public := proxy.URL + "/hooks/"
	base, hc := remoteBase(t, f)
	c := newClient(t, base, hc, client.WithWebhookListenAddr("127.0.0.1:0"), client.WithWebhookURL(public),
		client.WithWebhookSecret(testSecret), client.WithPollInterval(never))
	var hookURL string
	client.SetOnWebhookBound(c, func(u, addr string) {
		hookURL = u
		mu.Lock()
		target = addr
		mu.Unlock()
	})
	// Held until Submit has reported a state: else its one read before waiting could find
	// the job done already, and no webhook would be needed at all.
	release := f.Fake.Hold("tiny-a")
	defer release()
	req := chatJob("tiny-a", "via proxy")
	req.OnState = func(client.Event) { release() }
	res, err := c.Submit(testCtx(t), req)
	if err != nil || res.Text() != wantReply("tiny-a:latest", "via proxy") {
		t.Fatalf("Submit = %v, %v", res, err)
	}
	if !strings.HasPrefix(hookURL, proxy.URL+"/hooks/foreman-webhook/") {
		t.Errorf("receiver advertised as %s; want it under %s", hookURL, public)
	}
	if hits.Load() == 0 {
		t.Error("no delivery went through the public URL")
	}
}

func TestWebhookURLOptionChecks(t *testing.T) {
	t.Parallel()
	for name, opts := range map[string][]client.Option{
		"no listen addr": {client.WithWebhookURL("http://hooks.example.com")},
		"relative":       {client.WithWebhookURL("hooks.example.com:9000"), client.WithWebhookListenAddr(":9000")},
		"ftp":            {client.WithWebhookURL("ftp://hooks.example.com"), client.WithWebhookListenAddr(":9000")},
	} {
		if _, err := client.New("http://127.0.0.1:8080", opts...); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	if _, err := client.New("http://127.0.0.1:8080", client.WithWebhookURL("https://hooks.example.com/x"), client.WithWebhookListenAddr(":9000")); err != nil {
		t.Errorf("New with a valid webhook URL: %v", err)
	}
}
