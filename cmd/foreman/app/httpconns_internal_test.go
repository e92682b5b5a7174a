package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The connections the HTTP server is done with (closed, or hijacked by a handler) are
// forgotten: a foreman that served many connections does not keep one entry for each,
// and a hijacked connection is not taken for a request still being answered.
func TestHTTPConnsForgetsConnectionsTheServerIsDoneWith(t *testing.T) {
	t.Parallel()
	var conns httpConns
	done := make(chan http.ConnState, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n := conns.active(); n != 1 {
			t.Errorf("%s: %d connections active while its request is answered, want 1", r.URL.Path, n)
		}
		if r.URL.Path == "/hijack" {
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				_ = c.Close()
			}
		}
	}))
	srv.Config.ConnState = func(c net.Conn, st http.ConnState) {
		conns.track(c, st)
		if st == http.StateClosed || st == http.StateHijacked {
			done <- st
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	t.Cleanup(client.CloseIdleConnections)
	for _, c := range []struct {
		path string
		want http.ConnState
	}{{"/", http.StateClosed}, {"/hijack", http.StateHijacked}} {
		if resp, err := client.Get(srv.URL + c.path); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
		select {
		case st := <-done:
			if st != c.want {
				t.Fatalf("%s: connection %v, want %v", c.path, st, c.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the server never let go of the connection", c.path)
		}
		conns.mu.Lock()
		n := len(conns.state)
		conns.mu.Unlock()
		if n != 0 || conns.active() != 0 {
			t.Errorf("%s: %d connections remembered (%d active) after the server let go of it, want none", c.path, n, conns.active())
		}
	}
}

// A shutdown that ran out of time, or was canceled, fails only for a request still
// being answered; any other failure of the HTTP server's shutdown is one.
func TestHTTPShutdownError(t *testing.T) {
	t.Parallel()
	a := &App{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, err := range []error{context.DeadlineExceeded, context.Canceled, fmt.Errorf("wait: %w", context.DeadlineExceeded)} {
		if got := a.httpShutdownError(err); got != nil {
			t.Errorf("%v with no request being answered: %v, want no failure", err, got)
		}
	}
	if got := a.httpShutdownError(errors.New("close tcp 127.0.0.1:80: bad file descriptor")); got == nil {
		t.Error("a listener's failure to close: no failure")
	}
	c, peer := net.Pipe()
	defer c.Close()
	defer peer.Close()
	a.conns.track(c, http.StateNew)
	a.conns.track(c, http.StateActive)
	if got := a.httpShutdownError(context.DeadlineExceeded); got == nil || !strings.Contains(got.Error(), "requests still being answered (1)") ||
		!errors.Is(got, context.DeadlineExceeded) {
		t.Errorf("deadline with a request being answered: %v, want it named", got)
	}
}

// One remote address holds at most half of the listener's places: past its share its
// connection is refused, saying so, while another address is still served; a place
// comes back when one of its connections closes, and an address holding none is
// forgotten. The listener's peer is told to take 127.0.0.2 and 127.0.0.3 for two remote
// addresses, so the traffic stays on loopback.
func TestConnLimitGivesOneAddressHalfThePlaces(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var refusedMu sync.Mutex
	refused := map[string]int{}
	l := newConnLimit(ln, 4, func(reason string) {
		refusedMu.Lock()
		defer refusedMu.Unlock()
		refused[reason]++
	}, nil)
	const addrA, addrB = "127.0.0.2", "127.0.0.3"
	l.peer = func(a, _ net.Addr) (string, bool) {
		ip := a.(*net.TCPAddr).IP.String()
		return ip, ip == addrA || ip == addrB
	}
	// The server closes a connection, giving its place back, before it reports it closed.
	closed := make(chan struct{}, 8)
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}),
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed {
				closed <- struct{}{}
			}
		},
	}
	waitClosed := func(n int) {
		t.Helper()
		for range n {
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Fatal("the server never closed a connection its client closed")
			}
		}
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		_ = srv.Close()
		<-served
	})

	dial := func(from string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", ln.Addr().String())
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			// macOS configures only 127.0.0.1: sudo ifconfig lo0 alias 127.0.0.2 up (and .3).
			t.Skipf("cannot dial from %s: %v", from, err)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		return c
	}
	// get asks for / on c, kept alive, and returns the status of the answer (0: none).
	get := func(c net.Conn, r *bufio.Reader) int {
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: foreman\r\n\r\n"); err != nil {
			return 0
		}
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			return 0
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	serve := func(from string) net.Conn {
		t.Helper()
		c := dial(from)
		if code := get(c, bufio.NewReader(c)); code != http.StatusOK {
			t.Fatalf("a connection from %s: %d, want it served", from, code)
		}
		return c
	}

	a1, a2 := serve(addrA), serve(addrA)
	// A's third is answered without a word sent, and closed. Served, it would wait for
	// a request until the deadline.
	resp, err := http.ReadResponse(bufio.NewReader(dial(addrA)), nil)
	if err != nil {
		t.Fatalf("a third connection from one address of a listener of 4: %v, want it refused", err)
	}
	body, err := io.ReadAll(resp.Body)
	var e struct{ Error string }
	if err != nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "5" || !resp.Close ||
		json.Unmarshal(body, &e) != nil || e.Error != "too many connections from your address; retry" {
		t.Fatalf("refusal: %d %q %s (%v)", resp.StatusCode, resp.Header, body, err)
	}
	b1 := serve(addrB) // taken after the refusal, which is counted by then
	refusedMu.Lock()
	if want := map[string]int{"connections_per_address": 1}; fmt.Sprint(refused) != fmt.Sprint(want) {
		t.Errorf("refusals counted: %v, want %v", refused, want)
	}
	refusedMu.Unlock()

	// A's place comes back when one of its connections closes.
	_ = a1.Close()
	waitClosed(1)
	a3 := serve(addrA)
	l.mu.Lock()
	if got, want := fmt.Sprint(l.open, l.byPeer), fmt.Sprint(3, map[string]int{addrA: 2, addrB: 1}); got != want {
		t.Errorf("places held: %s, want %s", got, want)
	}
	l.mu.Unlock()

	for _, c := range []net.Conn{a2, a3, b1} {
		_ = c.Close()
	}
	waitClosed(3)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open != 0 || len(l.byPeer) != 0 {
		t.Errorf("all closed: %d places held, addresses %v, want none", l.open, l.byPeer)
	}
}

// A remote address counts as itself (IPv4, mapped into IPv6 or not; IPv6 on the
// listener's link, lanLocal's /64 or link-local) or by its IPv6 /64 (off the listener's
// link); loopback and a peer that is not TCP's are not limited.
func TestPeerKey(t *testing.T) {
	t.Parallel()
	tcp := func(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000} }
	lanLocal := tcp("2001:db8:1:9::10")
	for _, c := range []struct {
		addr    net.Addr
		key     string
		limited bool
	}{
		{tcp("192.0.2.7"), "192.0.2.7", true},
		{&net.TCPAddr{IP: net.IP{192, 0, 2, 7}, Port: 40000}, "192.0.2.7", true},
		{tcp("::ffff:192.0.2.7"), "192.0.2.7", true},
		{tcp("192.0.2.8"), "192.0.2.8", true},
		{tcp("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::/64", true},
		{tcp("2001:db8:1:2::1"), "2001:db8:1:2::/64", true},
		{tcp("2001:db8:1:3::1"), "2001:db8:1:3::/64", true},
		{tcp("2001:db8:1:9::a"), "2001:db8:1:9::a", true},
		{tcp("2001:db8:1:9:aaaa:bbbb:cccc:dddd"), "2001:db8:1:9:aaaa:bbbb:cccc:dddd", true},
		{&net.TCPAddr{IP: net.ParseIP("fe80::1"), Zone: "eth0"}, "fe80::1%eth0", true},
		{&net.TCPAddr{IP: net.ParseIP("fe80::1"), Zone: "eth1"}, "fe80::1%eth1", true},
		{tcp("127.0.0.1"), "", false},
		{tcp("127.8.9.10"), "", false},
		{tcp("::ffff:127.0.0.1"), "", false},
		{tcp("::1"), "", false},
		{&net.UnixAddr{Name: "@", Net: "unix"}, "", false},
	} {
		if key, limited := peerKey(c.addr, lanLocal); key != c.key || limited != c.limited {
			t.Errorf("%v: %q %v, want %q %v", c.addr, key, limited, c.key, c.limited)
		}
	}
}

// stubConn is an accepted connection between remote and local that takes what it is
// told and holds nothing.
type stubConn struct {
	net.Conn
	remote, local net.Addr
}

func (c *stubConn) RemoteAddr() net.Addr             { return c.remote }
func (c *stubConn) LocalAddr() net.Addr              { return c.local }
func (c *stubConn) Write(b []byte) (int, error)      { return len(b), nil }
func (c *stubConn) SetWriteDeadline(time.Time) error { return nil }
func (c *stubConn) Close() error                     { return nil }
func (c *stubConn) CloseWrite() error                { return nil }

// stubListener accepts the connections of conns, then says it is closed.
type stubListener struct {
	net.Listener
	conns chan net.Conn
}

func (l *stubListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	default:
		return nil, net.ErrClosed
	}
}

// On an IPv6 LAN every host takes its addresses in the LAN's one /64, the listener's own:
// there, as link-local addresses, a /64 is everyone on the link, not one host. Hosts on
// the listener's own link are told apart by address, as IPv4 ones are, so one that leaks
// connections does not lock the others out; a /64 the listener is not on still counts as
// one (its hosts' privacy addresses).
func TestConnLimitTellsHostsOnItsOwnLinkApart(t *testing.T) {
	t.Parallel()
	tcp := func(ip string) *net.TCPAddr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000} }
	for _, c := range []struct {
		name          string
		local         *net.TCPAddr
		first, second *net.TCPAddr
		apart         bool
	}{
		{"global, on the listener's /64", tcp("2001:db8:1:2::10"), tcp("2001:db8:1:2::a"), tcp("2001:db8:1:2::b"), true},
		{"unique local, on the listener's /64", tcp("fd00::2"), tcp("fd00::3"), tcp("fd00::4"), true},
		{"link-local", tcp("2001:db8:1:2::10"),
			&net.TCPAddr{IP: net.ParseIP("fe80::a"), Zone: "eth0"}, &net.TCPAddr{IP: net.ParseIP("fe80::b"), Zone: "eth0"}, true},
		{"another /64", tcp("2001:db8:1:2::10"), tcp("2001:db8:9:9::a"), tcp("2001:db8:9:9::b"), false},
		{"one host on the listener's /64", tcp("2001:db8:1:2::10"), tcp("2001:db8:1:2::a"), tcp("2001:db8:1:2::a"), false},
	} {
		var refused []string
		ln := &stubListener{conns: make(chan net.Conn, 3)}
		l := newConnLimit(ln, 4, func(reason string) { refused = append(refused, reason) }, nil)
		for _, remote := range []*net.TCPAddr{c.first, c.first, c.second} {
			ln.conns <- &stubConn{remote: remote, local: c.local}
		}
		for range 3 {
			if _, err := l.Accept(); err != nil {
				break
			}
		}
		if want := map[bool]int{true: 0, false: 1}[c.apart]; len(refused) != want {
			t.Errorf("%s: %s twice, then %s, on %s: refused %v, want %d refusals", c.name, c.first, c.second, c.local, refused, want)
		}
	}
}

// recordingListener hands out connections that keep a copy of what the server writes.
type recordingListener struct {
	net.Listener
	mu     sync.Mutex
	writes [][]byte
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &recordingConn{Conn: c, l: l}, nil
}

type recordingConn struct {
	net.Conn
	l *recordingListener
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.l.mu.Lock()
	c.l.writes = append(c.l.writes, bytes.Clone(p))
	c.l.mu.Unlock()
	return c.Conn.Write(p)
}

// Only net/http's own answers to requests it could not read are rewritten: a handler's
// plain-text error with Connection: close, the nearest a handler comes to one, is not.
func TestJSONRefusalLeavesHandlersAnswersAlone(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl := &recordingListener{Listener: ln}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		http.Error(w, "400 Bad Request", http.StatusBadRequest)
	}), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(rl) }()
	t.Cleanup(func() {
		_ = srv.Close()
		<-served
	})
	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if len(rl.writes) == 0 {
		t.Fatal("the server wrote nothing")
	}
	for _, w := range rl.writes {
		if _, ok := jsonRefusal(w); ok {
			t.Errorf("a handler's answer taken for net/http's own: %q", w)
		}
	}
	// And net/http's own, as it writes it, is.
	if _, ok := jsonRefusal([]byte("HTTP/1.1 400 Bad Request" + netHTTPErrorHeaders + "400 Bad Request")); !ok {
		t.Error("net/http's 400 not taken for its own")
	}
}

// A write is net/http's own answer only when its body repeats its status line (or is
// the 501's one sentence), as net/http writes them: a handler's body that merely begins
// with such a status line and header run (a relayed answer's bytes, written alone after
// its headers were flushed) goes out untouched, not rewritten into a second answer that
// would desynchronize a kept-alive connection.
func TestJSONRefusalTakesOnlyNetHTTPsOwnBodies(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		status, body string
		want         bool
	}{
		{"400 Bad Request", "400 Bad Request", true},
		{"431 Request Header Fields Too Large", "431 Request Header Fields Too Large", true},
		{"400 Bad Request: missing required Host header", "400 Bad Request: missing required Host header", true},
		{"505 HTTP Version Not Supported: unsupported protocol version", "505 HTTP Version Not Supported: unsupported protocol version", true},
		{"501 Not Implemented", "Unsupported transfer encoding", true},
		{"400 Bad Request", "400 Bad Request, and the rest of a relayed body", false},
		{"400 Bad Request", "anything a target wrote", false},
		{"501 Not Implemented", "Unsupported transfer encoding, and more", false},
		{"400 Bad Request: x", "400 Bad Request: y", false},
	} {
		if _, ok := jsonRefusal([]byte("HTTP/1.1 " + c.status + netHTTPErrorHeaders + c.body)); ok != c.want {
			t.Errorf("status %q body %q: taken for net/http's own %v, want %v", c.status, c.body, ok, c.want)
		}
	}

	// Through a served connection: the body a handler writes after flushing its headers
	// reaches the client byte for byte.
	body := "HTTP/1.1 400 Bad Request" + netHTTPErrorHeaders + "hello from a relayed body"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush()
		_, _ = io.WriteString(w, body)
	}), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(wrapLimited{ln}) }()
	t.Cleanup(func() {
		_ = srv.Close()
		<-served
	})
	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(got) != body {
		t.Errorf("the client read %q (%v), the handler wrote %q", got, err, body)
	}
}

// wrapLimited hands out its connections as the HTTP listener does, in a limitedConn.
type wrapLimited struct{ net.Listener }

func (l wrapLimited) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &limitedConn{Conn: c, release: func() {}}, nil
}
