package natsd

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// HealthzSaysNotReadyOnce makes the server's next Healthz answer what nats-server's own
// gives when its readiness check loses its race with a 1 ms timer (no listener, a loaded
// machine): "startup did not complete", nothing else looked at.
func (s *Server) HealthzSaysNotReadyOnce() {
	var once sync.Once
	s.healthz = func(o *server.HealthzOptions) *server.HealthStatus {
		st := (*server.HealthStatus)(nil)
		once.Do(func() {
			st = &server.HealthStatus{Status: "na", StatusCode: 503,
				Error: "failed to be ready for connections after 1ms: startup did not complete"}
		})
		if st != nil {
			return st
		}
		return s.ns.Healthz(o)
	}
}

// SetRecoverGrace sets recoverGrace until the test ends (by the returned restore).
func SetRecoverGrace(d time.Duration) (restore func()) {
	old := recoverGrace
	recoverGrace = d
	return func() { recoverGrace = old }
}

// PingFirst makes the server's next n in-process connections send a PING ahead of
// whatever the server says after its INFO, as a server too busy to answer the CONNECT
// within its first ping interval does. It returns how many connections were opened.
func (s *Server) PingFirst(n int) (opened func() int) {
	p := &pingFirst{ns: s.ns, left: n}
	s.conns = p
	return func() int {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.opened
	}
}

type pingFirst struct {
	ns     nats.InProcessConnProvider
	mu     sync.Mutex
	left   int
	opened int
}

func (p *pingFirst) InProcessConn() (net.Conn, error) {
	c, err := p.ns.InProcessConn()
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.opened++
	if p.left == 0 {
		return c, nil
	}
	p.left--
	return &pingingConn{Conn: c}, nil
}

// pingingConn passes the server's INFO line, then reads a PING before the rest.
type pingingConn struct {
	net.Conn
	info   bool // the INFO line has been read
	pinged bool
}

func (c *pingingConn) Read(b []byte) (int, error) {
	if c.info && !c.pinged {
		c.pinged = true
		return copy(b, "PING\r\n"), nil
	}
	n, err := c.Conn.Read(b)
	if bytes.Contains(b[:n], []byte("\r\n")) {
		c.info = true
	}
	return n, err
}

// SlowFirstAnswer makes the server's next in-process connection hand over its first
// bytes (the INFO line) only after d, as a server too busy to answer at once does.
func (s *Server) SlowFirstAnswer(d time.Duration) {
	s.conns = &slowFirst{ns: s.ns, delay: d}
}

type slowFirst struct {
	ns    nats.InProcessConnProvider
	delay time.Duration
	used  bool
}

func (p *slowFirst) InProcessConn() (net.Conn, error) {
	c, err := p.ns.InProcessConn()
	if err != nil || p.used {
		return c, err
	}
	p.used = true
	return &slowConn{Conn: c, delay: p.delay}, nil
}

// slowConn's first Read waits out delay before it reads: the server's answer is late, and
// a read deadline the client set before it has passed by then.
type slowConn struct {
	net.Conn
	delay time.Duration
	late  bool
}

func (c *slowConn) Read(b []byte) (int, error) {
	if !c.late {
		c.late = true
		<-time.After(c.delay) // the simulated slow server, not a wait for a condition
	}
	return c.Conn.Read(b)
}

// The CLIENTS account's limits, which deploy/nats-cluster.conf repeats.
const (
	ClientMaxConns = clientMaxConns
	ClientMaxSubs  = clientMaxSubs
)

// DefaultDataDirOn is DefaultDataDir as it is on goos, with env for the environment and
// home for the home directory ("" makes finding it fail).
func DefaultDataDirOn(goos string, env map[string]string, home string) (string, error) {
	return defaultDataDir(goos, func(k string) string { return env[k] }, func() (string, error) {
		if home == "" {
			return "", errors.New("no home")
		}
		return home, nil
	})
}

// SetListenerMaxConns sets listenerMaxConns until the test ends (by the returned
// restore). Not for parallel tests: Start reads it.
func SetListenerMaxConns(n int) (restore func()) {
	old := listenerMaxConns
	listenerMaxConns = n
	return func() { listenerMaxConns = old }
}

// SetLogClock sets the clock of the log adapters' windows until the test ends (by the
// returned restore). Not for parallel tests: Start reads it.
func SetLogClock(now func() time.Time) (restore func()) {
	old := logNow
	logNow = now
	return func() { logNow = old }
}
