package app

import (
	"io"
	"net"
	"net/http"
	"sync"
	"time"
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

// refusedConn is what a connection past the cap is told before it is closed. Nothing of
// its request is read: the answer does not wait on a client that may send nothing.
const refusedConn = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n" +
	"Retry-After: 5\r\nConnection: close\r\nContent-Length: 40\r\n\r\n" +
	`{"error":"too many connections; retry"}` + "\n"

// connLimit is the HTTP listener, serving at most max connections at once. Each one
// costs a goroutine, buffers and parsed headers (up to MaxHeaderBytes: about 200 KB of
// heap) and a file descriptor, for as long as its client keeps it (ReadHeaderTimeout,
// a body's read, IdleTimeout between requests, a sync call's whole wait): unbounded,
// twenty thousand idle clients took 566 MB and every descriptor the process may open,
// so the embedded NATS server's files, the calls to Ollama and the webhooks failed with
// "too many open files". A connection past the cap is accepted, answered 503 and
// closed at once, so it holds nothing and its client hears why (ADR-0082).
type connLimit struct {
	net.Listener
	slots   chan struct{}
	refused func()
}

func newConnLimit(ln net.Listener, max int, refused func()) *connLimit {
	return &connLimit{Listener: ln, slots: make(chan struct{}, max), refused: refused}
}

// Accept returns the next connection that fits under the cap, refusing those that do not.
func (l *connLimit) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitedConn{Conn: c, release: func() { <-l.slots }}, nil
		default:
			l.refuse(c)
		}
	}
}

func (l *connLimit) refuse(c net.Conn) {
	// A fresh connection's send buffer is empty, so this write does not wait on the
	// client; the deadline only keeps a broken socket from holding the accept loop.
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = io.WriteString(c, refusedConn)
	_ = c.Close()
	if l.refused != nil {
		l.refused()
	}
}

// limitedConn gives its place back when the server closes it (once: Close may come twice).
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// CloseWrite keeps net/http's half-close of a TCP connection before it closes one on an
// error (so the client reads the error rather than a reset).
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
