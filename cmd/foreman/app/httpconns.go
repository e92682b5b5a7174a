package app

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
)

// httpConns tracks the HTTP server's connections by state (http.Server.ConnState), so a
// shutdown that reaches its deadline can tell a request still being answered from a
// connection that holds none. http.Server.Shutdown closes idle keep-alive connections at
// once but waits up to 5 s for a new one to send its first request (a browser opens
// connections ahead of its requests): under a short FOREMAN_SHUTDOWN_TIMEOUT such a
// connection alone runs the deadline out, though nothing was left unanswered.
type httpConns struct {
	mu    sync.Mutex
	state map[net.Conn]http.ConnState
}

// track is the http.Server's ConnState hook.
func (c *httpConns) track(conn net.Conn, st http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch st {
	case http.StateHijacked, http.StateClosed:
		delete(c.state, conn) // no longer the server's to wait for
	default:
		if c.state == nil {
			c.state = make(map[net.Conn]http.ConnState)
		}
		c.state[conn] = st
	}
}

// active is the number of connections with a request read and not yet answered.
func (c *httpConns) active() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, st := range c.state {
		if st == http.StateActive {
			n++
		}
	}
	return n
}

// spareConns is how many HTTP connections foreman takes at once beyond FOREMAN_MAX_QUEUE:
// every queued job's sync caller may hold one while it waits, and the rest (streams being
// written, keep-alive pools, the status page, /jobs) share these.
const spareConns = 1024

// refusal is why a connection is refused: its reason in foreman_requests_refused_total
// and what it is told before it is closed. Nothing of its request is read: the answer
// does not wait on a client that may send nothing.
type refusal struct {
	reason string
	answer string
}

var (
	overCap   = refusal{"connections", refusedAnswer("too many connections; retry")}
	overShare = refusal{"connections_per_address", refusedAnswer("too many connections from your address; retry")}
)

func refusedAnswer(msg string) string {
	body := `{"error":"` + msg + `"}` + "\n"
	return "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n" +
		"Retry-After: 5\r\nConnection: close\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// connLimit is the HTTP listener, serving at most limit connections at once. Each one
// costs a goroutine, buffers and parsed headers (up to MaxHeaderBytes: about 200 KB of
// heap) and a file descriptor, for as long as its client keeps it (ReadHeaderTimeout,
// a body's read, IdleTimeout between requests, a sync call's whole wait): unbounded,
// twenty thousand idle clients took 566 MB and every descriptor the process may open,
// so the embedded NATS server's files, the calls to Ollama and the webhooks failed with
// "too many open files". A connection past the cap is accepted, answered 503 and
// closed at once, so it holds nothing and its client hears why (ADR-0082).
//
// One remote address holds at most half of the places (ADR-0088): a script that opens a
// connection per request, each then idle for IdleTimeout, or one host flooding, would
// otherwise lock every other client out until its connections lapse.
type connLimit struct {
	net.Listener
	limit   int
	share   int // places one remote address may hold
	refused func(reason string)
	// log hears of the refusals: each kind once per failurelog.Every (failures), the
	// others at debug. A flood or a client leaking connections turns every other client
	// away with a 503; /metrics counts it, but the operator reads the log.
	log      *slog.Logger
	failures failurelog.Window
	// peer names the share a connection's remote address counts against, given the
	// address it reached; limited false leaves it out of the shares. peerKey, but for tests.
	peer func(remote, local net.Addr) (key string, limited bool)

	// bodyWait bounds net/http's read of the body a request refused with 417 declared
	// (FOREMAN_BODY_READ_TIMEOUT; 0: unbounded), see expectationRefusal.
	bodyWait time.Duration

	mu     sync.Mutex
	open   int
	byPeer map[string]int // connections held per share; a share at zero is deleted
}

func newConnLimit(ln net.Listener, limit int, refused func(reason string), log *slog.Logger) *connLimit {
	return &connLimit{
		Listener: ln, limit: limit, share: max(limit/2, 1), refused: refused, log: log,
		peer: peerKey, byPeer: make(map[string]int),
	}
}

// Accept returns the next connection that fits under the cap and its address's share,
// refusing those that do not.
func (l *connLimit) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key, limited := l.peer(c.RemoteAddr(), c.LocalAddr())
		if why := l.take(key, limited); why != nil {
			l.refuse(c, why)
			continue
		}
		return &limitedConn{Conn: c, release: func() { l.give(key, limited) }, bodyWait: l.bodyWait}, nil
	}
}

// take holds a place for a connection of share key, or says why there is none.
func (l *connLimit) take(key string, limited bool) *refusal {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.open >= l.limit:
		return &overCap
	case limited && l.byPeer[key] >= l.share:
		return &overShare
	}
	l.open++
	if limited {
		l.byPeer[key]++
	}
	return nil
}

// give gives back a place take held.
func (l *connLimit) give(key string, limited bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if !limited {
		return
	}
	if l.byPeer[key]--; l.byPeer[key] <= 0 {
		delete(l.byPeer, key) // the map holds only the addresses connected now
	}
}

func (l *connLimit) refuse(c net.Conn, why *refusal) {
	// A fresh connection's send buffer is empty, so this write does not wait on the
	// client; the deadline only keeps a broken socket from holding the accept loop.
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = io.WriteString(c, why.answer)
	_ = c.Close()
	if l.refused != nil {
		l.refused(why.reason)
	}
	l.logRefusal(c.RemoteAddr(), why)
}

// logRefusal logs a connection from remote refused for why: a warning the first time,
// then once per failurelog.Every for each kind of refusal with the count of those not
// warned of ("repeats"), the others at debug. The kind alone is the key: a flood from
// many addresses is one line too.
func (l *connLimit) logRefusal(remote net.Addr, why *refusal) {
	if l.log == nil {
		return
	}
	var msg string
	args := []any{"remote", remote.String()}
	if why == &overShare {
		msg = "HTTP connection refused: its address holds half of the connection places already " +
			"(a client leaking connections, or one host flooding; the places are FOREMAN_MAX_QUEUE + 1024)"
		args = append(args, "share", l.share)
	} else {
		msg = "HTTP connection refused: foreman holds as many connections as it serves at once " +
			"(FOREMAN_MAX_QUEUE + 1024; a flood, or clients leaking connections)"
		args = append(args, "limit", l.limit)
	}
	ok, repeats := l.failures.Admit(why.reason)
	if !ok {
		l.log.Debug(msg, args...)
		return
	}
	if repeats > 0 {
		args = append(args, "repeats", repeats)
	}
	l.log.Warn(msg, args...)
}

// peerKey is the share remote, a connection's peer, counts against, local the address
// it reached. An IPv4 address, mapped into IPv6 or not, is one; an IPv6 address off the
// listener's link counts by its /64, as one host may take any number of addresses in its
// /64 (privacy addresses, or at will): a remote /64 is one site, as a NAT's address is.
// On the listener's own link a /64 is everyone there: the LAN's one prefix (which local
// is in) or fe80::/64, which every link has. There a host counts by its address, zone
// and all, as an IPv4 host on the LAN does, which may take several addresses too; a /64
// would hold every IPv6 client of the LAN to one share, one leaking connections locking
// the others out. Loopback is not limited: a reverse proxy or the CLI on the same host
// carries everyone's connections; nor is an address that is not TCP's (a unix socket's
// peer has none to tell apart).
func peerKey(remote, local net.Addr) (key string, limited bool) {
	tcp, ok := remote.(*net.TCPAddr)
	if !ok {
		return "", false
	}
	ip := tcp.AddrPort().Addr().Unmap()
	switch {
	case ip.IsLoopback():
		return "", false
	case ip.Is4():
		return ip.String(), true
	case ip.IsLinkLocalUnicast():
		return ip.String(), true
	case onLink(ip, local):
		return ip.WithZone("").String(), true
	}
	p, _ := ip.Prefix(64) // never fails for 64 bits of an IPv6 address (the zone is dropped)
	return p.String(), true
}

// onLink reports whether IPv6 address ip is in the /64 of local, the listener's address
// a connection reached.
func onLink(ip netip.Addr, local net.Addr) bool {
	tcp, ok := local.(*net.TCPAddr)
	if !ok {
		return false
	}
	l := tcp.AddrPort().Addr().Unmap()
	if !l.Is6() || l.IsLoopback() {
		return false
	}
	lp, err := l.Prefix(64)
	return err == nil && lp.Contains(ip.WithZone(""))
}

// limitedConn gives its place back when the server closes it (once: Close may come twice).
type limitedConn struct {
	net.Conn
	once     sync.Once
	release  func()
	bodyWait time.Duration // connLimit.bodyWait
}

func (c *limitedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// Write passes what the server writes, but for net/http's own plain-text answer to a
// request it could not read, and its empty 417 to an Expect it does not meet, which go
// out as foreman's JSON error instead (ADR-0090).
func (c *limitedConn) Write(p []byte) (int, error) {
	answer, ok := jsonRefusal(p)
	if !ok {
		if answer, ok = expectationRefusal(p); ok && c.bodyWait > 0 {
			// net/http reads the body the request declared once this answer is out, to
			// its end or 256 KiB, with no deadline of its own.
			_ = c.Conn.SetReadDeadline(time.Now().Add(c.bodyWait))
		}
	}
	if ok {
		if _, err := io.WriteString(c.Conn, answer); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// netHTTPErrorHeaders follow the status line of the answers net/http writes itself, in
// one write and before any handler runs, to a request it could not read: headers past
// MaxHeaderBytes (431), a malformed request or a missing Host (400), an unsupported
// Transfer-Encoding (501) or protocol version (505) (net/http's conn.serve, Go 1.26). No
// handler's answer begins so: net/http's header writer sorts the keys, Connection before
// Content-Type, and adds Date.
const netHTTPErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// jsonRefusal is net/http's own answer p as foreman answers bad input (a 4xx with
// {"error": "..."}, as Ollama's errors are), or false when p is no such answer. A 5xx
// (501, 505) says what is wrong with the request: it becomes a 400 saying the same.
func jsonRefusal(p []byte) (string, bool) {
	rest, ok := bytes.CutPrefix(p, []byte("HTTP/1.1 "))
	if !ok || len(rest) < 3 {
		return "", false
	}
	// The header run directly after the status line: a write of a handler's answer
	// (headers, a body's chunk) is ruled out at its first line end.
	end := bytes.Index(rest, []byte("\r\n"))
	if end < 0 || !bytes.HasPrefix(rest[end:], []byte(netHTTPErrorHeaders)) {
		return "", false
	}
	body := rest[end+len(netHTTPErrorHeaders):]
	code, err := strconv.Atoi(string(rest[:3]))
	if err != nil || code < 400 || code > 599 {
		return "", false
	}
	// The body repeats the status line ("431 Request Header Fields Too Large", "400 Bad
	// Request: missing required Host header") or, for 501 alone, says "Unsupported
	// transfer encoding", and ends the write: net/http writes nothing else so. A handler's
	// body written alone after its flushed headers may begin like this one (a relayed
	// target's bytes); rewritten, it would put a second answer on a kept-alive connection.
	if !bytes.Equal(body, rest[:end]) && (code != http.StatusNotImplemented || string(body) != "Unsupported transfer encoding") {
		return "", false
	}
	msg := string(body)
	msg = strings.TrimPrefix(msg, strconv.Itoa(code)+" "+http.StatusText(code))
	msg = strings.TrimPrefix(msg, ": ")
	switch {
	case code == http.StatusRequestHeaderFieldsTooLarge:
		msg = fmt.Sprintf("request headers too large: foreman reads at most %d KiB of a request's line and headers", MaxHeaderBytes>>10)
	case msg == "":
		msg = "malformed HTTP request"
	}
	if code >= 500 {
		code = http.StatusBadRequest
	}
	return jsonAnswer(code, strings.ToLower(msg[:1])+msg[1:])
}

// jsonAnswer is a whole answer of status code with {"error": msg}, on a connection then
// closed.
func jsonAnswer(code int, msg string) (string, bool) {
	b, err := json.Marshal(map[string]string{"error": msg})
	if err != nil {
		return "", false
	}
	b = append(b, '\n')
	return fmt.Sprintf("HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		code, http.StatusText(code), len(b), b), true
}

// netHTTPExpectationFailed begins net/http's own answer to a request whose Expect is
// other than 100-continue, written before any handler runs (response.sendExpectationFailed,
// Go 1.26): a 417 with no body, its headers Connection, then the Date and Content-Length
// net/http adds after a handler's sorted headers.
const (
	netHTTPExpectationFailed = "HTTP/1.1 417 Expectation Failed\r\nConnection: close\r\nDate: "
	netHTTPExpectationEnd    = "\r\nContent-Length: 0\r\n\r\n"
)

// expectationRefusal is net/http's own 417, p, as foreman answers bad input (a JSON
// error), or false when p is no such answer: after the Date, only an empty body's
// Content-Length may end the headers and the write. No route of foreman's answers 417.
func expectationRefusal(p []byte) (string, bool) {
	rest, ok := bytes.CutPrefix(p, []byte(netHTTPExpectationFailed))
	if !ok {
		return "", false
	}
	if end := bytes.Index(rest, []byte("\r\n")); end < 0 || string(rest[end:]) != netHTTPExpectationEnd {
		return "", false
	}
	return jsonAnswer(http.StatusExpectationFailed, "unsupported Expect header: foreman meets only Expect: 100-continue")
}

// CloseWrite keeps net/http's half-close of a TCP connection before it closes one on an
// error (so the client reads the error rather than a reset).
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
