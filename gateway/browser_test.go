package gateway

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// withHost sends a request with the given Host header (the dialed address stays the
// loopback test server).
func (b *testBundle) withHost(t *testing.T, method, path, host string, body []byte, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(testCtx(t, 30e9), method, b.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, out
}

// A web page on another origin cannot queue work: its "simple" text/plain POST (no
// preflight) is refused before anything is queued, as Ollama refuses it.
func TestBrowserForeignOriginRefused(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	for _, rt := range []struct{ path, body string }{
		{"/api/chat", string(chatBody("tiny-a", "hi", "false"))},
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","stream":false}`},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`},
		{"/jobs", `{"kind":"generate","model":"tiny-a","prompt":"hi"}`},
	} {
		for _, origin := range []string{"https://evil.example", "http://localhost.evil.example", "null"} {
			resp, out := b.request(t, http.MethodPost, rt.path, []byte(rt.body), "Content-Type", "text/plain", "Origin", origin)
			wantError(t, resp, out, http.StatusForbidden, "origin")
			if resp.Header.Get("Access-Control-Allow-Origin") != "" {
				t.Errorf("%s from %s: CORS headers on a refusal", rt.path, origin)
			}
		}
	}
	resp, out := b.request(t, http.MethodGet, "/jobs", nil)
	if resp.StatusCode != 200 || strings.Contains(string(out), `"id"`) {
		t.Errorf("jobs after refused requests: %d %s", resp.StatusCode, out)
	}
	for _, c := range b.Fake.Calls() {
		if c.Model != "" {
			t.Errorf("the target saw %s %s; a refused request must queue nothing", c.Method, c.Path)
		}
	}
}

// Ollama's default origins and FOREMAN_ORIGINS entries work and get CORS headers; a
// same-origin request passes without them.
func TestBrowserAllowedOrigins(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, withGateway(func(c *Config) {
		c.Origins = []string{"https://app.example.com", "https://*.example.org", "https://a*a.example.net"}
	}))
	for _, origin := range []string{
		"http://localhost", "http://localhost:3000", "https://127.0.0.1:8443", "http://0.0.0.0:80",
		"app://obsidian.md", "file://", "tauri://localhost", "vscode-webview://abc",
		"https://app.example.com", "https://chat.example.org", "https://ana.example.net", "https://aa.example.net",
		"HTTPS://App.Example.COM", // an origin's scheme and host are case-insensitive
	} {
		resp, out := b.request(t, http.MethodPost, "/api/chat", chatBody("tiny-a", "hi", "false"), "Origin", origin)
		if resp.StatusCode != 200 {
			t.Fatalf("origin %s: %d %s", origin, resp.StatusCode, out)
		}
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != origin {
			t.Errorf("origin %s: Access-Control-Allow-Origin %q", origin, got)
		}
		if !strings.Contains(resp.Header.Get("Vary"), "Origin") {
			t.Errorf("origin %s: Vary %q", origin, resp.Header.Get("Vary"))
		}
		if !strings.Contains(resp.Header.Get("Access-Control-Expose-Headers"), HeaderJobID) {
			t.Errorf("origin %s: %s not exposed: %q", origin, HeaderJobID, resp.Header.Get("Access-Control-Expose-Headers"))
		}
	}
	// The * stands for what lies between its two sides, which never overlap: "https://a"
	// and "a.example.net" do not make "https://a.example.net" match "https://a*a.example.net".
	for _, origin := range []string{"https://example.com", "https://app.example.com.evil", "http://app.example.com", "https://a.example.net"} {
		resp, out := b.request(t, http.MethodGet, "/api/tags", nil, "Origin", origin)
		wantError(t, resp, out, http.StatusForbidden, "origin")
	}
	u, _ := url.Parse(b.URL)
	resp, out := b.request(t, http.MethodGet, "/api/tags", nil, "Origin", "http://"+u.Host)
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("same origin: %d %q %s", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"), out)
	}
	// Same-origin is the Host itself, over http or https (a foreman behind a TLS proxy,
	// its status page on a LAN name); an origin that only ends with that name is foreign.
	for _, origin := range []string{"http://foreman.lan:8080", "https://foreman.lan:8080"} {
		resp, out := b.withHost(t, http.MethodGet, "/api/tags", "foreman.lan:8080", nil, "Origin", origin)
		if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("same origin %s: %d %q %s", origin, resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"), out)
		}
	}
	resp, out = b.withHost(t, http.MethodGet, "/api/tags", "foreman.lan:8080", nil, "Origin", "http://evil-foreman.lan:8080")
	wantError(t, resp, out, http.StatusForbidden, "origin")
}

// "*" allows every origin, as OLLAMA_ORIGINS=* does.
func TestBrowserAllOrigins(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) { c.Origins = []string{"*"} }))
	resp, out := b.request(t, http.MethodGet, "/api/tags", nil, "Origin", "https://anything.example")
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("%d %q %s", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"), out)
	}
}

// A preflight from an allowed origin is answered without the bearer token, with the
// methods and headers foreman's clients send; one from a foreign origin is refused.
func TestBrowserPreflight(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) { c.AuthToken = "s3cret" }))
	b.Token = "" // a preflight carries no Authorization
	hdr := []string{
		"Origin", "http://localhost:5173",
		"Access-Control-Request-Method", "POST",
		"Access-Control-Request-Headers", "authorization,content-type,idempotency-key,x-foreman-trace,x-foreman-priority,x-foreman-program,x-api-key,anthropic-version,if-none-match,x-evil,cookie2",
	}
	resp, out := b.request(t, http.MethodOptions, "/jobs", nil, hdr...)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("preflight: %d %s", resp.StatusCode, out)
	}
	h := resp.Header
	if h.Get("Access-Control-Allow-Origin") != "http://localhost:5173" || h.Get("Access-Control-Max-Age") != "43200" {
		t.Errorf("preflight headers: %v", h)
	}
	for _, m := range []string{"GET", "POST", "DELETE", "OPTIONS"} {
		if !strings.Contains(h.Get("Access-Control-Allow-Methods"), m) {
			t.Errorf("Allow-Methods %q lacks %s", h.Get("Access-Control-Allow-Methods"), m)
		}
	}
	for _, name := range []string{"Authorization", "Content-Type", "Idempotency-Key", "X-Foreman-Trace", "X-Stainless-Os",
		"X-Foreman-Priority", "X-Foreman-Program", "X-Api-Key", "Anthropic-Version", "If-None-Match", "Range"} {
		if !strings.Contains(h.Get("Access-Control-Allow-Headers"), name) {
			t.Errorf("Allow-Headers %q lacks %s", h.Get("Access-Control-Allow-Headers"), name)
		}
	}
	// Only foreman's own X-Foreman-* headers are added as asked for.
	for _, name := range []string{"X-Evil", "Cookie2"} {
		if strings.Contains(strings.ToLower(h.Get("Access-Control-Allow-Headers")), strings.ToLower(name)) {
			t.Errorf("Allow-Headers %q allows %s, which the page asked for", h.Get("Access-Control-Allow-Headers"), name)
		}
	}
	resp, out = b.request(t, http.MethodOptions, "/jobs", nil, "Origin", "https://evil.example", "Access-Control-Request-Method", "POST")
	wantError(t, resp, out, http.StatusForbidden, "origin")

	// The real request from the allowed origin still needs the token.
	resp, out = b.request(t, http.MethodGet, "/jobs", nil, "Origin", "http://localhost:5173")
	wantError(t, resp, out, http.StatusUnauthorized, "unauthorized")
	if resp.Header.Get("Access-Control-Allow-Origin") == "" {
		t.Error("a 401 to an allowed origin lacks CORS headers; the page cannot read why")
	}
	resp, out = b.request(t, http.MethodGet, "/jobs", nil, "Origin", "http://localhost:5173", "Authorization", "Bearer s3cret")
	if resp.StatusCode != 200 {
		t.Errorf("allowed origin with the token: %d %s", resp.StatusCode, out)
	}
	// A foreign origin is refused even with the token.
	resp, out = b.request(t, http.MethodGet, "/jobs", nil, "Origin", "https://evil.example", "Authorization", "Bearer s3cret")
	wantError(t, resp, out, http.StatusForbidden, "origin")
}

// On a loopback listener a request must name this machine: a page whose name was
// rebound to 127.0.0.1 (DNS rebinding) is refused on every route, /healthz included.
func TestBrowserHostCheckOnLoopback(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) { c.ListenAddr = "127.0.0.1:8080" }))
	port := b.URL[strings.LastIndexByte(b.URL, ':')+1:]
	for _, path := range []string{"/api/tags", "/jobs", "/healthz", "/"} {
		for _, host := range []string{"evil.example", "evil.example:" + port, "localhost.evil.example:" + port, "8.8.8.8:" + port} {
			resp, out := b.withHost(t, http.MethodGet, path, host, nil)
			wantError(t, resp, out, http.StatusForbidden, "host")
		}
	}
	// The rebound page is same-origin with itself: the Host check alone stops it.
	resp, out := b.withHost(t, http.MethodGet, "/jobs", "evil.example:"+port, nil, "Origin", "http://evil.example:"+port)
	wantError(t, resp, out, http.StatusForbidden, "host")

	for _, host := range []string{
		"localhost:" + port, "LOCALHOST", "127.0.0.1:" + port, "[::1]:" + port, "0.0.0.0:" + port,
		"192.168.1.5:" + port, "10.0.0.2", "app.localhost:" + port, "mac.local", "foreman.internal:" + port,
		"[::ffff:0.0.0.0]:" + port, // the unspecified address in its IPv4-mapped form
	} {
		resp, out := b.withHost(t, http.MethodGet, "/api/tags", host, nil)
		if resp.StatusCode != 200 {
			t.Errorf("Host %s: %d %s", host, resp.StatusCode, out)
		}
	}
	// This machine's name, in any case, as Ollama takes it.
	if name, err := os.Hostname(); err == nil && name != "" {
		resp, out := b.withHost(t, http.MethodGet, "/api/tags", strings.ToUpper(name)+":"+port, nil)
		if resp.StatusCode != 200 {
			t.Errorf("Host %s (os.Hostname): %d %s", name, resp.StatusCode, out)
		}
	}
	// An HTTP/1.0 request may carry no Host at all: it names no foreign site.
	req := httptest.NewRequest(http.MethodGet, "/api/tags", nil)
	req.Proto, req.ProtoMajor, req.ProtoMinor, req.Host = "HTTP/1.0", 1, 0, ""
	rec := httptest.NewRecorder()
	b.GW.ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Errorf("no Host: %d %s", rec.Code, rec.Body)
	}
}

// On any other listen address every Host is accepted (the token guards it); the
// address is only a configuration value here, nothing binds it.
func TestBrowserNoHostCheckOffLoopback(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"192.0.2.10:8080", "0.0.0.0:8080", "[::]:8080", ""} {
		b := newTestBundle(t, withGateway(func(c *Config) { c.ListenAddr = addr }))
		resp, out := b.withHost(t, http.MethodGet, "/api/tags", "evil.example", nil)
		if resp.StatusCode != 200 {
			t.Errorf("listen %q, Host evil.example: %d %s", addr, resp.StatusCode, out)
		}
	}
}

// A machine's own public address is accepted as a Host, as Ollama does.
func TestBrowserHostLocalIP(t *testing.T) {
	t.Parallel()
	local := netip.MustParseAddr("203.0.113.7")
	p := newHostPolicy("127.0.0.1:8080")
	p.localIP = func(ip netip.Addr) bool { return ip == local }
	s := &Server{hosts: p}
	if !s.hostAllowed("203.0.113.7:8080") || !s.hostAllowed("[::ffff:203.0.113.7]:8080") || s.hostAllowed("203.0.113.8:8080") {
		t.Error("local IP policy")
	}
}

func TestParseOrigins(t *testing.T) {
	t.Parallel()
	got, err := ParseOrigins(" https://a.example , ,chrome-extension://*,*")
	if err != nil || len(got) != 3 {
		t.Fatalf("%q %v", got, err)
	}
	for _, bad := range []string{"a.example", "https://*.*.example"} {
		if _, err := ParseOrigins(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestE2EBrowserPolicyMatchesOllama asks a real Ollama (listening on loopback) and a
// loopback foreman the same browser questions: both must refuse a foreign origin and a
// rebound host, and let an allowed origin through with CORS headers.
func TestE2EBrowserPolicyMatchesOllama(t *testing.T) {
	target := ollamatest.RealOllama(t)
	b := newQueuedBundle(t, nil, withTargetURL(target), withGateway(func(c *Config) { c.ListenAddr = "127.0.0.1:8080" }))
	ask := func(base, method, path, host, body string, hdr ...string) *http.Response {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, err := http.NewRequestWithContext(testCtx(t, 60e9), method, base+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		if host != "" {
			req.Host = host
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	chat := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_predict":2}}`
	cases := []struct {
		name, method, path, host, body string
		hdr                            []string
	}{
		{"foreign origin, text/plain POST", "POST", "/api/chat", "", chat, []string{"Content-Type", "text/plain", "Origin", "https://evil.example"}},
		{"foreign origin preflight", "OPTIONS", "/api/chat", "", "", []string{"Origin", "https://evil.example", "Access-Control-Request-Method", "POST"}},
		{"rebound host", "GET", "/api/tags", "evil.example", "", nil},
		{"rebound host, same origin", "GET", "/api/tags", "evil.example:8080", "", []string{"Origin", "http://evil.example:8080"}},
		{"allowed origin", "GET", "/api/tags", "", "", []string{"Origin", "http://localhost:3000"}},
		{"allowed origin preflight", "OPTIONS", "/api/chat", "", "", []string{"Origin", "http://localhost:3000", "Access-Control-Request-Method", "POST"}},
		{"localhost host", "GET", "/api/tags", "localhost", "", nil},
	}
	for _, c := range cases {
		want := ask(target, c.method, c.path, c.host, c.body, c.hdr...)
		got := ask(b.URL, c.method, c.path, c.host, c.body, c.hdr...)
		if got.StatusCode != want.StatusCode {
			t.Errorf("%s: foreman %d, Ollama %d", c.name, got.StatusCode, want.StatusCode)
		}
		for _, h := range []string{"Access-Control-Allow-Origin", "Access-Control-Allow-Methods", "Access-Control-Max-Age"} {
			if got.Header.Get(h) != want.Header.Get(h) {
				t.Errorf("%s: %s foreman %q, Ollama %q", c.name, h, got.Header.Get(h), want.Header.Get(h))
			}
		}
	}
}

// warnCounter counts the browser policy's refusals logged at Warn and above.
type warnCounter struct{ warns *atomic.Int64 }

func (h warnCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h warnCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn && strings.HasPrefix(r.Message, "request refused") {
		h.warns.Add(1)
	}
	return nil
}
func (h warnCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h warnCounter) WithGroup(string) slog.Handler      { return h }

// A page looping requests from a foreign origin or under a rebound name (before any
// token is checked) costs a warning per ten seconds, not a log line per request: each
// refusal is counted in foreman_requests_refused_total.
func TestBrowserRefusalsAreLoggedAtABoundedRate(t *testing.T) {
	t.Parallel()
	var warns atomic.Int64
	b := newTestBundle(t, withGateway(func(c *Config) {
		c.Logger = slog.New(warnCounter{&warns})
		c.ListenAddr = "127.0.0.1:8080"
	}))
	const n = 200
	for i := range n {
		req := httptest.NewRequest(http.MethodPost, "/api/chat", strings.NewReader("x"))
		req.Host = "127.0.0.1:8080"
		req.Header.Set("Origin", "https://evil.example")
		if i%2 == 1 {
			req.Host = "rebind.evil.example:8080"
		}
		w := httptest.NewRecorder()
		b.GW.ServeHTTP(w, req)
		if w.Code != http.StatusForbidden {
			t.Fatalf("request %d: %d %s, want 403", i, w.Code, w.Body)
		}
	}
	if got := warns.Load(); got != 2 {
		t.Errorf("%d refused requests wrote %d warnings, want one per kind", n, got)
	}
	fams := scrape(t, b)
	for _, reason := range []string{"host_not_allowed", "origin_not_allowed"} {
		if got := metricValue(fams, "foreman_requests_refused_total", "reason", reason); got != n/2 {
			t.Errorf("foreman_requests_refused_total{reason=%s} = %v, want %d", reason, got, n/2)
		}
	}
}

// A client with a stale token, or someone guessing tokens, is counted in
// foreman_requests_refused_total{reason="unauthorized"} and told in the log once per ten
// seconds: 401s were neither counted nor logged, and a guessing run went unseen.
func TestUnauthorizedRequestsAreCountedAndLoggedAtABoundedRate(t *testing.T) {
	t.Parallel()
	var warns atomic.Int64
	b := newTestBundle(t, withGateway(func(c *Config) {
		c.Logger = slog.New(warnCounter{&warns})
		c.AuthToken = "s3cret-token"
	}))
	const n = 50
	for i := range n {
		hdr := []string{"Authorization", "Bearer guess-" + strconv.Itoa(i)}
		if i%2 == 1 {
			hdr = []string{"X-Foreman-Program", "nobody"} // no token at all
		}
		req := httptest.NewRequest(http.MethodGet, "/jobs", nil)
		req.Header.Set(hdr[0], hdr[1])
		w := httptest.NewRecorder()
		b.GW.ServeHTTP(w, req)
		if w.Code != http.StatusUnauthorized {
			t.Fatalf("request %d: %d %s, want 401", i, w.Code, w.Body)
		}
	}
	if got := warns.Load(); got != 1 {
		t.Errorf("%d refused requests wrote %d warnings, want one", n, got)
	}
	if got := metricValue(scrape(t, b), "foreman_requests_refused_total", "reason", "unauthorized"); got != n {
		t.Errorf("foreman_requests_refused_total{reason=unauthorized} = %v, want %d", got, n)
	}
}
