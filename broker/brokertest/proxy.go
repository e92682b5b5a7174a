package brokertest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy forwards loopback TCP connections to a target address until closed; closing it
// cuts every connection through it at once, as a node that dies does to its peers (no
// goodbye, no leader hand-over), and refuses new ones.
type Proxy struct {
	ln net.Listener

	mu     sync.Mutex
	target string // "" until known: connections are cut as they come
	conns  []net.Conn
	closed bool
	paused bool // connections are cut as they come, until Resume
	wg     sync.WaitGroup
}

// NewProxy starts a proxy to target; the caller closes it.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &Proxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	return p
}

// setTarget points the proxy at target: a proxy started with none (its address must be
// known before its target listens) cuts the connections that came before.
func (p *Proxy) setTarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

// Addr is the proxy's loopback address (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target := p.target
		p.mu.Unlock()
		if target == "" {
			in.Close()
			continue
		}
		out, err := net.Dial("tcp", target)
		if err != nil {
			in.Close()
			continue
		}
		through, open := p.track(in, out)
		if !open {
			return
		}
		if !through {
			continue
		}
		p.wg.Add(2)
		go p.pipe(in, out)
		go p.pipe(out, in)
	}
}

// track keeps conns to cut them later, or cuts them at once (through false) when the
// proxy is paused or closed (open false).
func (p *Proxy) track(conns ...net.Conn) (through, open bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.paused {
		for _, c := range conns {
			c.Close()
		}
		return false, !p.closed
	}
	p.conns = append(p.conns, conns...)
	return true, true
}

// Pause cuts every connection and cuts the new ones as they come, as a server that is
// down does, until Resume.
func (p *Proxy) Pause() {
	p.mu.Lock()
	p.paused = true
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// Resume lets connections through again after Pause.
func (p *Proxy) Resume() {
	p.mu.Lock()
	p.paused = false
	p.mu.Unlock()
}

func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}

// Close cuts every connection and stops listening; safe to call twice.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	p.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
}
