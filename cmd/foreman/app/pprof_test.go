package app

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// get asks the profiles' listener at addr for path, naming it host in the Host header.
func get(t *testing.T, addr, host, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// With FOREMAN_PPROF_ADDR the runtime's profiles are served there: every goroutine's
// stack (the worker's loop among them), the heap. Not the command line, which may hold
// tokens; not to a request naming the listener otherwise than by loopback (a page whose
// name was rebound to 127.0.0.1); and not after the stop.
func TestPprofServesTheRuntimesProfiles(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	secret := "pprof-test-token-" + t.Name()
	a, err := Start(ctx, Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), PprofAddr: "127.0.0.1:0", AuthToken: secret,
		WebhookAllowNets: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown(context.Background())
	addr := a.PprofAddr()
	if addr == "" || addr == a.Addr() {
		t.Fatalf("profiles' listener %q (HTTP %q), want one of its own", addr, a.Addr())
	}
	// The worker's goroutine is started by Start, and may not have run yet when it returns:
	// the stacks are read again, bounded, until its loop is among them.
	var code int
	var body string
	for deadline := time.Now().Add(10 * time.Second); ; {
		code, body = get(t, addr, addr, "/debug/pprof/goroutine?debug=2")
		if code != http.StatusOK || strings.Contains(body, "foreman/worker.(*Worker).Run") || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond): // polling with a deadline
		}
	}
	if code != http.StatusOK || !strings.Contains(body, "goroutine ") || !strings.Contains(body, "foreman/worker.(*Worker).Run") {
		t.Errorf("goroutine stacks: %d, want 200 with the worker's loop among them:\n%.2000s", code, body)
	}
	if code, body := get(t, addr, "localhost", "/debug/pprof/heap?debug=1"); code != http.StatusOK || !strings.Contains(body, "heap profile") {
		t.Errorf("heap named by localhost: %d %.200q", code, body)
	}
	if code, body := get(t, addr, addr, "/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("index: %d %.200q", code, body)
	}
	code, body = get(t, addr, addr, "/debug/pprof/cmdline")
	if code != http.StatusNotFound || strings.Contains(body, os.Args[0]) {
		t.Errorf("cmdline: %d %q, want 404 without the command line", code, body)
	}
	for _, host := range []string{"rebound.example", "rebound.example:" + strings.Split(addr, ":")[1], "192.168.1.5"} {
		if code, body := get(t, addr, host, "/debug/pprof/goroutine?debug=1"); code != http.StatusForbidden || strings.Contains(body, "goroutine profile") {
			t.Errorf("named %s: %d %.200q, want 403", host, code, body)
		}
	}
	// A webhook may not be pointed at it, even with loopback opened to webhooks: it is
	// one of foreman's own listeners.
	req, err := http.NewRequest(http.MethodPost, "http://"+a.Addr()+"/jobs",
		strings.NewReader(`{"model":"tiny-a","messages":[],"state_webhook_url":"http://`+addr+`/debug/pprof/profile"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(out), "foreman's own endpoint") {
		t.Errorf("a webhook to the profiles' listener: %d %s, want 400 naming foreman's own endpoint", resp.StatusCode, out)
	}
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Errorf("profiles' listener %s still open after the stop", addr)
	}
}

// Without FOREMAN_PPROF_ADDR no profile is served: no listener is opened.
func TestPprofIsOffByDefault(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := Start(ctx, Config{Addr: "127.0.0.1:0", DataDir: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown(context.Background())
	if addr := a.PprofAddr(); addr != "" {
		t.Errorf("profiles served on %s without FOREMAN_PPROF_ADDR", addr)
	}
	if code, _ := get(t, a.Addr(), a.Addr(), "/debug/pprof/goroutine?debug=1"); code != http.StatusNotFound && code != http.StatusUnauthorized {
		t.Errorf("foreman's own listener answers the profiles' path %d", code)
	}
}

// A profiles' address in use stops the start with an error naming FOREMAN_PPROF_ADDR, and
// nothing is left listening; one off loopback is refused before anything is bound.
func TestPprofAddrItCannotUse(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := Start(ctx, Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), PprofAddr: taken.Addr().String()}, slog.New(slog.DiscardHandler))
	if err == nil {
		_ = a.Shutdown(context.Background())
		t.Fatal("started with its profiles' address in use")
	}
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), `FOREMAN_PPROF_ADDR="`+taken.Addr().String()+`"`) {
		t.Errorf("start: %v; want address in use, naming FOREMAN_PPROF_ADDR", err)
	}
	for _, addr := range []string{"0.0.0.0:6060", ":6060", "192.168.1.5:6060", "[::]:6060", "mac.example:6060"} {
		err := CheckPprofAddr(Config{PprofAddr: addr})
		if err == nil || !strings.Contains(err.Error(), "FOREMAN_PPROF_ADDR") || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("%s: %v, want a refusal naming FOREMAN_PPROF_ADDR", addr, err)
		}
	}
	for _, addr := range []string{"", "127.0.0.1:6060", "localhost:6060", "[::1]:6060"} {
		if err := CheckPprofAddr(Config{PprofAddr: addr}); err != nil {
			t.Errorf("%q: %v", addr, err)
		}
	}
}

// A request names the profiles' listener by a loopback address or localhost, with its
// port or without (port 80), IPv6 in brackets; any other name is refused.
func TestPprofHostNames(t *testing.T) {
	t.Parallel()
	for host, want := range map[string]bool{
		"127.0.0.1:6060": true, "127.0.0.1": true, "127.9.9.9:1": true, "localhost:6060": true, "LocalHost": true,
		"[::1]:6060": true, "[::1]": true, "[::ffff:127.0.0.1]:6060": true,
		"": false, "rebound.example": false, "rebound.example:6060": false, "localhost.example:6060": false,
		"192.168.1.5": false, "[2001:db8::1]:6060": false, "[2001:db8::1]": false,
	} {
		if got := loopbackHost(host); got != want {
			t.Errorf("Host %q: loopback %v, want %v", host, got, want)
		}
	}
}

// Besides the index's named profiles, the CPU profile, the execution trace and symbol
// lookups are served: `go tool pprof` and `go tool trace` read them.
func TestPprofServesCPUProfileTraceAndSymbols(t *testing.T) {
	t.Parallel()
	h := pprofHandler()
	for _, path := range []string{"/debug/pprof/profile?seconds=1", "/debug/pprof/trace?seconds=0.01", "/debug/pprof/symbol"} {
		req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:6060"+path, nil)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || rec.Body.Len() == 0 || strings.Contains(rec.Body.String(), "Unknown profile") {
			t.Errorf("%s: %d %.200q, want it served", path, rec.Code, rec.Body.String())
		}
	}
}

// A Config given to Start with a profiles' address off loopback is refused as serve's
// settings refuse it, before anything is bound.
func TestStartRefusesAPprofAddrOffLoopback(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A documentation address no interface has: were it bound, the bind itself would fail.
	a, err := Start(ctx, Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), PprofAddr: "192.0.2.1:6060"}, slog.New(slog.DiscardHandler))
	if err == nil {
		_ = a.Shutdown(context.Background())
		t.Fatal("started with its profiles' listener off loopback")
	}
	if !strings.Contains(err.Error(), "FOREMAN_PPROF_ADDR") || !strings.Contains(err.Error(), "not a loopback address") {
		t.Errorf("start: %v; want the refusal of an address off loopback", err)
	}
}

// A web page of another site, open in a browser on foreman's machine, cannot run a
// profile: its <img src="http://127.0.0.1:6060/debug/pprof/trace?seconds=86400"> names
// the listener by loopback and needs no CORS permission, and although the page reads
// nothing, the trace runs for a day (and a CPU profile so started holds the only one
// there may be). The operator's own requests (an address typed in the browser, a link of
// the index page, go tool pprof or curl, which send no Sec-Fetch-Site) are served.
func TestPprofRefusesOtherSitesPages(t *testing.T) {
	t.Parallel()
	h := pprofHandler()
	for _, c := range []struct {
		hdr    []string
		served bool
	}{
		{nil, true}, // go tool pprof, curl
		{[]string{"Sec-Fetch-Site", "none"}, true},
		{[]string{"Sec-Fetch-Site", "same-origin", "Origin", "http://127.0.0.1:6060"}, true},
		{[]string{"Sec-Fetch-Site", "cross-site"}, false},
		{[]string{"Sec-Fetch-Site", "same-site"}, false}, // a page of localhost:3000
		{[]string{"Origin", "https://evil.example"}, false},
		{[]string{"Origin", "null"}, false},
	} {
		req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:6060/debug/pprof/heap?debug=1", nil)
		for i := 0; i+1 < len(c.hdr); i += 2 {
			req.Header.Set(c.hdr[i], c.hdr[i+1])
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch served := strings.Contains(rec.Body.String(), "heap profile"); {
		case c.served && (rec.Code != http.StatusOK || !served):
			t.Errorf("headers %q: %d %.200q, want the heap profile", c.hdr, rec.Code, rec.Body.String())
		case !c.served && (rec.Code != http.StatusForbidden || served):
			t.Errorf("headers %q: %d %.200q, want 403 and no profile", c.hdr, rec.Code, rec.Body.String())
		}
	}
}
