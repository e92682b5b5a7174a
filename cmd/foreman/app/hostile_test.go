package app_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// startPlain starts a foreman in front of a fake Ollama with one model.
func startPlain(t *testing.T) *app.App {
	t.Helper()
	mac := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	cfg := app.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), OllamaURL: mac.URL, TargetName: "studio", PollInterval: 200 * time.Millisecond}
	a, err := app.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopForeman(t, a) })
	return a
}

// headersOf returns n distinct headers of about 50 bytes each.
func headersOf(n int) http.Header {
	h := http.Header{}
	for i := range n {
		h.Set(fmt.Sprintf("X-Pad-%06d", i), strings.Repeat("v", 32))
	}
	return h
}

// A request whose headers pass MaxHeaderBytes is refused with 431 before it is parsed
// further: a MiB of short headers, net/http's own bound, costs several MB of heap per
// connection. Headers of a browser's size still pass.
func TestRequestHeadersAreBounded(t *testing.T) {
	t.Parallel()
	a := startPlain(t)
	get := func(h http.Header) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "http://"+a.Addr()+"/api/version", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header = h
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(headersOf(app.MaxHeaderBytes / 2 / 50)); code != http.StatusOK {
		t.Errorf("headers of half the bound: %d, want 200", code)
	}
	if code := get(headersOf(2 * app.MaxHeaderBytes / 50)); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("headers of twice the bound: %d, want 431", code)
	}
}

// A request net/http cannot read is answered before any handler runs; it is answered as
// foreman answers bad input, a 4xx with a JSON error, not net/http's plain text (a 5xx
// for an unsupported transfer encoding or protocol version). A request it can read is
// answered as ever on the same kind of connection.
func TestRequestsNetHTTPCannotReadGetJSONErrors(t *testing.T) {
	t.Parallel()
	a := startPlain(t)
	host := "Host: " + a.Addr() + "\r\n"
	for _, c := range []struct {
		name, request string
		code          int
		says          string
	}{
		{"headers too large", "GET /api/version HTTP/1.1\r\n" + host + "X-Pad: " + strings.Repeat("v", 2*app.MaxHeaderBytes) + "\r\n\r\n",
			http.StatusRequestHeaderFieldsTooLarge, "request headers too large"},
		{"malformed", "GARBAGE\r\n\r\n", http.StatusBadRequest, "malformed HTTP request"},
		{"no host", "GET /api/version HTTP/1.1\r\n\r\n", http.StatusBadRequest, "missing required Host header"},
		{"transfer encoding", "POST /api/chat HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip, chunked\r\n\r\n",
			http.StatusBadRequest, "unsupported transfer encoding"},
		{"protocol version", "GET /api/version HTTP/2.0\r\n" + host + "\r\n", http.StatusBadRequest, "unsupported protocol version"},
		// Framing a proxy in front might read otherwise (request smuggling).
		{"two lengths", "POST /api/chat HTTP/1.1\r\n" + host + "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", http.StatusBadRequest, "malformed HTTP request"},
		{"a signed length", "POST /api/chat HTTP/1.1\r\n" + host + "Content-Length: +2\r\n\r\n{}", http.StatusBadRequest, "malformed HTTP request"},
		{"two encodings", "POST /api/chat HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
			http.StatusBadRequest, "unsupported transfer encoding"},
		{"a NUL in a header", "GET /api/version HTTP/1.1\r\n" + host + "X-A: a\x00b\r\n\r\n", http.StatusBadRequest, "malformed HTTP request"},
		{"a bare CR in a header", "GET /api/version HTTP/1.1\r\n" + host + "X-A: a\rb\r\n\r\n", http.StatusBadRequest, "malformed HTTP request"},
		{"two hosts", "GET /api/version HTTP/1.1\r\n" + host + host + "\r\n", http.StatusBadRequest, "malformed HTTP request"},
		{"readable", "GET /api/version HTTP/1.1\r\n" + host + "\r\n", http.StatusOK, ""},
	} {
		conn, err := net.Dial("tcp", a.Addr())
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		go func() { _, _ = io.WriteString(conn, c.request) }() // the 431 may come before all is sent
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			conn.Close()
			t.Fatalf("%s: %v", c.name, err)
		}
		body, err := io.ReadAll(resp.Body)
		conn.Close()
		var e struct{ Error string }
		switch {
		case err != nil:
			t.Errorf("%s: body: %v", c.name, err)
		case resp.StatusCode != c.code || resp.Header.Get("Content-Type") != "application/json; charset=utf-8" || json.Unmarshal(body, &e) != nil:
			t.Errorf("%s: %d %q %q; want %d with a JSON body", c.name, resp.StatusCode, resp.Header.Get("Content-Type"), body, c.code)
		case c.says != "" && !strings.Contains(e.Error, c.says):
			t.Errorf("%s: error %q, want it to say %q", c.name, e.Error, c.says)
		}
	}
}

// HTTP connections past the cap are answered 503 with a JSON error and closed at once,
// holding no place, goroutine or file; once a connection goes, its place is taken again.
// Without the cap, idle clients held every file descriptor foreman may open.
func TestHTTPConnectionsAreCapped(t *testing.T) {
	t.Parallel()
	mac := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	cfg := app.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), OllamaURL: mac.URL, TargetName: "studio", PollInterval: 200 * time.Millisecond}
	cfg.Components.MaxConns = 2
	a, err := app.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopForeman(t, a) })

	// Two clients that connect and send nothing take both places (for ReadHeaderTimeout).
	var idle []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", a.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		idle = append(idle, c)
	}
	// The third is answered without sending anything, and closed, for the cap: loopback
	// is not held to one address's share (ADR-0088). Places are taken in the order the
	// listener accepts, so the third is refused once both are held.
	eventually(t, 10*time.Second, "a connection past the cap refused", func() bool {
		c, err := net.Dial("tcp", a.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return false // a place was still free: served, it waits for a request
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("refusal's body: %v", err)
		}
		var e struct{ Error string }
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
			json.Unmarshal(b, &e) != nil || e.Error != "too many connections; retry" {
			t.Fatalf("refusal: %d %q %s", resp.StatusCode, resp.Header, b)
		}
		return true
	})

	// A client that goes gives its place back.
	idle[0].Close()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	eventually(t, 10*time.Second, "a place given back", func() bool {
		resp, err := client.Get("http://" + a.Addr() + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return false
		}
		if !strings.Contains(string(b), `foreman_requests_refused_total{reason="connections"}`) {
			t.Fatalf("/metrics does not count the refusal:\n%s", b)
		}
		return true
	})
}

// A FOREMAN_MAX_QUEUE as large as the setting takes (an operator's "no limit") still
// serves HTTP: the connection cap above it (MaxQueue + spareConns) wrapped around to a
// negative number, and every connection was refused "too many connections".
func TestHugeMaxQueueStillServesHTTP(t *testing.T) {
	t.Parallel()
	mac := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	cfg := app.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), OllamaURL: mac.URL, TargetName: "studio", PollInterval: 200 * time.Millisecond}
	cfg.MaxQueue = math.MaxInt
	a, err := app.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopForeman(t, a) })
	resp, err := http.Get("http://" + a.Addr() + "/api/version")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/version with FOREMAN_MAX_QUEUE=%d: %d %s", cfg.MaxQueue, resp.StatusCode, b)
	}
}

// The requests net/http would answer itself, bypassing foreman's handler, are foreman's:
// "OPTIONS *" declaring a body its client never sends got no answer at all (net/http's
// own OPTIONS handler reads up to 4 KiB of it with no deadline, so the connection and its
// goroutine stayed for good, no token asked), and a CONNECT got the router's plain-text
// 405. Each is answered within FOREMAN_BODY_READ_TIMEOUT, bad input with a JSON error.
func TestRequestsForNoRouteAreForemans(t *testing.T) {
	t.Parallel()
	mac := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	cfg := app.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), OllamaURL: mac.URL, TargetName: "studio",
		PollInterval: 200 * time.Millisecond, BodyReadTimeout: 200 * time.Millisecond}
	a, err := app.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopForeman(t, a) })
	host := "Host: " + a.Addr() + "\r\n"
	for _, c := range []struct {
		name, request string
		code          int
		says          string
	}{
		{"OPTIONS *", "OPTIONS * HTTP/1.1\r\n" + host + "\r\n", http.StatusOK, ""},
		{"OPTIONS * declaring a body", "OPTIONS * HTTP/1.1\r\n" + host + "Content-Length: 100\r\n\r\n", http.StatusOK, ""},
		{"another method of *", "GET * HTTP/1.1\r\n" + host + "\r\n", http.StatusBadRequest, "OPTIONS only"},
		{"CONNECT", "CONNECT " + a.Addr() + " HTTP/1.1\r\n" + host + "\r\n", http.StatusMethodNotAllowed, "not a proxy"},
	} {
		conn, err := net.Dial("tcp", a.Addr())
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(conn, c.request); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			conn.Close()
			t.Errorf("%s: no answer: %v", c.name, err)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		conn.Close()
		var e struct{ Error string }
		switch {
		case err != nil:
			t.Errorf("%s: body: %v", c.name, err)
		case resp.StatusCode != c.code:
			t.Errorf("%s: %d %q, want %d", c.name, resp.StatusCode, body, c.code)
		case c.says == "":
			if resp.Header.Get("Allow") == "" {
				t.Errorf("%s: no Allow header: %q", c.name, resp.Header)
			}
		case resp.Header.Get("Content-Type") != "application/json; charset=utf-8" || json.Unmarshal(body, &e) != nil:
			t.Errorf("%s: %d %q %q; want a JSON error", c.name, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		case !strings.Contains(e.Error, c.says):
			t.Errorf("%s: error %q, want it to say %q", c.name, e.Error, c.says)
		}
	}
}

// An Expect other than 100-continue, which net/http refuses itself with an empty 417
// before any handler runs, gets a JSON error like the other requests net/http answers
// (ADR-0090), and the body its request declared is waited for no longer than
// FOREMAN_BODY_READ_TIMEOUT: net/http reads it after the answer with no deadline, so a
// client that sent none of it held its connection and goroutine for good.
func TestAnUnmetExpectationIsAJSONErrorAndEnds(t *testing.T) {
	t.Parallel()
	mac := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	cfg := app.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), OllamaURL: mac.URL, TargetName: "studio",
		PollInterval: 200 * time.Millisecond, BodyReadTimeout: 200 * time.Millisecond}
	a, err := app.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopForeman(t, a) })
	conn, err := net.Dial("tcp", a.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "POST /api/chat HTTP/1.1\r\nHost: "+a.Addr()+"\r\nExpect: something\r\nContent-Length: 100\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var e struct{ Error string }
	if resp.StatusCode != http.StatusExpectationFailed || resp.Header.Get("Content-Type") != "application/json; charset=utf-8" ||
		json.Unmarshal(body, &e) != nil || !strings.Contains(e.Error, "100-continue") {
		t.Errorf("%d %q %q; want 417 with a JSON error naming 100-continue", resp.StatusCode, resp.Header, body)
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("after the answer: %v, want the connection closed", err)
	}
}
