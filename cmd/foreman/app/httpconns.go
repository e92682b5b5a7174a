package app

import (
	"net"
	"net/http"
	"sync"
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
