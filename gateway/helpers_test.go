package gateway

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// testBundle is a gateway in front of the fake Ollama, on a real embedded NATS, served by
// an httptest.Server.
type testBundle struct {
	Fake   *ollamatest.Server // nil with withTargetURL
	Broker *brokertest.Bundle
	Target ollama.Client // what the gateway talks to (the fake's client, maybe wrapped)
	Inv    *ollama.Inventory
	GW     *Server
	HTTP   *httptest.Server
	URL    string // the gateway's base URL
	Token  string // the gateway's auth token; request adds it when set
}

// bundleOptions adjust setup; see the with* functions.
type bundleOptions struct {
	fake      []ollamatest.Option
	broker    []brokertest.Option
	gateway   func(*Config)
	wrap      func(ollama.Client) ollama.Client
	inventory func(*ollama.InventoryConfig)
	targetURL string        // a real target instead of the fake
	userinfo  string        // "user:password" put into the fake's URL
	noPoll    bool          // skip the initial poll
	runEvery  time.Duration // run the inventory's poll loop at this interval
	sndBuf    int           // the gateway's socket send buffer per connection; 0 = the system's
}

type bundleOption func(*bundleOptions)

// withFake passes options to the fake Ollama.
func withFake(opts ...ollamatest.Option) bundleOption {
	return func(o *bundleOptions) { o.fake = append(o.fake, opts...) }
}

// withBroker passes options to brokertest.
func withBroker(opts ...brokertest.Option) bundleOption {
	return func(o *bundleOptions) { o.broker = append(o.broker, opts...) }
}

// withGateway adjusts the gateway Config (Store, Target and Inventory are already set).
func withGateway(fn func(*Config)) bundleOption { return func(o *bundleOptions) { o.gateway = fn } }

// withTarget wraps the client the gateway and the inventory use (e.g. to add hooks).
func withTarget(fn func(ollama.Client) ollama.Client) bundleOption {
	return func(o *bundleOptions) { o.wrap = fn }
}

// withInventory adjusts the inventory Config.
func withInventory(fn func(*ollama.InventoryConfig)) bundleOption {
	return func(o *bundleOptions) { o.inventory = fn }
}

// withTargetURL points the gateway at a real Ollama; no fake is started (Fake is nil).
func withTargetURL(u string) bundleOption { return func(o *bundleOptions) { o.targetURL = u } }

// withTargetUserinfo puts userinfo ("user:password") into the fake's URL, as in
// FOREMAN_OLLAMA_URL=http://user:password@host:11434.
func withTargetUserinfo(userinfo string) bundleOption {
	return func(o *bundleOptions) { o.userinfo = userinfo }
}

// withoutInitialPoll leaves the inventory un-polled, as at start with the target down.
func withoutInitialPoll() bundleOption { return func(o *bundleOptions) { o.noPoll = true } }

// withPolling runs the inventory's poll loop every d until the test ends.
func withPolling(d time.Duration) bundleOption { return func(o *bundleOptions) { o.runEvery = d } }

// withSendBuffer shrinks the gateway's socket send buffer, so a client that stops
// reading blocks the server's writes after little data.
func withSendBuffer(n int) bundleOption { return func(o *bundleOptions) { o.sndBuf = n } }

// sendBufferListener sets the send buffer of every accepted connection.
type sendBufferListener struct {
	net.Listener
	n int
}

func (l sendBufferListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(l.n)
	}
	return c, err
}

// newTestBundle starts everything; it all stops when the test ends. By default the
// inventory has polled once and does not poll again unless a test asks (Refresh or
// withPolling), so tests decide when the gateway's view of the target changes.
func newTestBundle(t testing.TB, opts ...bundleOption) *testBundle {
	t.Helper()
	var o bundleOptions
	for _, fn := range opts {
		fn(&o)
	}
	b := &testBundle{Broker: brokertest.New(t, o.broker...)}
	targetURL := o.targetURL
	if targetURL == "" {
		b.Fake = ollamatest.New(t, o.fake...)
		targetURL = b.Fake.URL
		if o.userinfo != "" {
			targetURL = strings.Replace(targetURL, "://", "://"+o.userinfo+"@", 1)
		}
	}
	client, err := ollama.NewClient(ollama.ClientConfig{BaseURL: targetURL, ResponseHeaderTimeout: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	b.Target = client
	if o.wrap != nil {
		b.Target = o.wrap(client)
	}
	icfg := ollama.InventoryConfig{Client: b.Target, Interval: time.Hour, PollTimeout: 5 * time.Second, Logger: slog.New(slog.DiscardHandler)}
	if o.runEvery > 0 {
		icfg.Interval = o.runEvery
	}
	if o.inventory != nil {
		o.inventory(&icfg)
	}
	b.Inv = ollama.NewInventory(icfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !o.noPoll && o.runEvery == 0 {
		if err := b.Inv.Refresh(ctx); err != nil {
			t.Fatalf("initial inventory poll: %v", err)
		}
	}
	if o.runEvery > 0 {
		runCtx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = b.Inv.Run(runCtx) }()
		t.Cleanup(func() { stop(); <-done })
	}
	cfg := Config{Store: b.Broker.Store, Target: b.Target, TargetURL: targetURL, Inventory: b.Inv, WebhookPolicy: loopbackWebhooks(t, targetURL)}
	if o.gateway != nil {
		o.gateway(&cfg)
	}
	b.Token = cfg.AuthToken
	b.GW, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.HTTP = httptest.NewUnstartedServer(b.GW)
	if o.sndBuf > 0 {
		b.HTTP.Listener = sendBufferListener{Listener: b.HTTP.Listener, n: o.sndBuf}
	}
	b.HTTP.Start()
	t.Cleanup(b.HTTP.Close)
	b.URL = b.HTTP.URL
	return b
}

// request sends method path with body (nil for none) and returns the response with its
// body read. It adds the bundle's bearer token when one is set and hdr has no
// Authorization. It fails the test on a transport error.
func (b *testBundle) request(t testing.TB, method, path string, body []byte, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	resp := b.send(t, method, path, body, hdr...)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, out
}

// send is request without reading the body, for streaming tests; the caller closes it.
// hdr holds header name/value pairs.
func (b *testBundle) send(t testing.TB, method, path string, body []byte, hdr ...string) *http.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, b.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	if b.Token != "" && req.Header.Get("Authorization") == "" {
		req.Header.Set("Authorization", "Bearer "+b.Token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

// deleteAtFake sends DELETE path with body to the bundle's fake target (a model's or an
// alias's removal, as `ollama rm` sends it), which must answer 200.
func (b *testBundle) deleteAtFake(t testing.TB, ctx context.Context, path, body string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, b.Fake.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("DELETE %s %s at the fake target: %d", path, body, resp.StatusCode)
	}
}

// testCtx is a context that ends with the test or after d.
func testCtx(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// loopbackWebhooks is the webhook policy of tests: their receivers are httptest servers on
// loopback, so they open loopback (FOREMAN_WEBHOOK_ALLOW_NETS=127.0.0.0/8,::1/128), and
// the target stays protected as serve wires it.
func loopbackWebhooks(t testing.TB, targetURL string) webhook.Policy {
	t.Helper()
	nets, err := webhook.ParseNets("127.0.0.0/8, ::1/128")
	if err != nil {
		t.Fatal(err)
	}
	p := webhook.Policy{AllowNets: nets}
	if ep, err := webhook.EndpointOf(targetURL); err == nil {
		p.Protected = append(p.Protected, ep)
	}
	return p
}

// submitReply is the reply on foreman.jobs.submit.
type submitReply = broker.SubmitReply

// eventually checks cond at once and then every 10ms until it holds; it fails t with
// what if within passes first. cond runs on the test's goroutine and may call t.Fatal.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(within)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("%s: not within %v", what, within)
		}
	}
}
