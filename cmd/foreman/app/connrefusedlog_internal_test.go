package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
)

// lines is a slog handler keeping every line written out, for a test to read.
type lines struct {
	mu  sync.Mutex
	all []string
}

func (h *lines) Enabled(context.Context, slog.Level) bool { return true }
func (h *lines) Handle(_ context.Context, r slog.Record) error {
	line := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool { line += fmt.Sprintf(" %s=%v", a.Key, a.Value); return true })
	h.mu.Lock()
	defer h.mu.Unlock()
	h.all = append(h.all, line)
	return nil
}
func (h *lines) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *lines) WithGroup(string) slog.Handler      { return h }

// take returns the lines so far and forgets them.
func (h *lines) take() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.all
	h.all = nil
	return out
}

// A connection refused at the cap, or past its address's share, is a fault the operator
// must hear of (a flood, a client leaking connections locks others out): each kind is
// warned of once per failurelog.Every, naming the remote address and the cap, the
// others at debug and counted in the next warning. Before, a refusal was only counted in
// /metrics: every other client got 503 with nothing in the log.
func TestConnectionRefusalsAreWarnedOncePerWindow(t *testing.T) {
	t.Parallel()
	log := &lines{}
	stub := &stubListener{conns: make(chan net.Conn, 32)}
	l := newConnLimit(stub, 2, nil, slog.New(log))
	now := time.Date(2026, 12, 6, 3, 0, 0, 0, time.UTC)
	l.failures.Now = func() time.Time { return now }
	local := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 8080} // never dialled: stub connections
	from := func(ip string, port int) net.Conn {
		return &stubConn{remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: port}, local: local}
	}
	// accept feeds conns to the listener and returns the ones it served.
	accept := func(conns ...net.Conn) (served []net.Conn) {
		t.Helper()
		for _, c := range conns {
			stub.conns <- c
		}
		for {
			c, err := l.Accept()
			if errors.Is(err, net.ErrClosed) {
				return served
			}
			if err != nil {
				t.Fatal(err)
			}
			served = append(served, c)
		}
	}
	// A leaky host takes its share (one place of two) and is refused three more times;
	// another host takes the last place, and three more hosts are refused at the cap.
	served := accept(from("192.0.2.7", 1), from("192.0.2.7", 2), from("192.0.2.7", 3), from("192.0.2.7", 4),
		from("192.0.2.8", 1), from("192.0.2.9", 1), from("192.0.2.10", 1), from("192.0.2.11", 1))
	if len(served) != 2 {
		t.Fatalf("%d connections served, want 2", len(served))
	}
	var warned []string
	debug := 0
	for _, line := range log.take() {
		switch {
		case strings.HasPrefix(line, "WARN "):
			warned = append(warned, line)
		case strings.HasPrefix(line, "DEBUG "):
			debug++
		}
	}
	if len(warned) != 2 || debug != 4 {
		t.Fatalf("%d warnings and %d debug lines for 6 refusals of two kinds, want 2 and 4:\n%s", len(warned), debug, strings.Join(warned, "\n"))
	}
	for _, want := range []string{"remote=192.0.2.7:2", "FOREMAN_MAX_QUEUE"} {
		if !strings.Contains(warned[0], want) {
			t.Errorf("the share's refusal %q does not say %s", warned[0], want)
		}
	}
	for _, want := range []string{"remote=192.0.2.9:1", "limit=2", "FOREMAN_MAX_QUEUE"} {
		if !strings.Contains(warned[1], want) {
			t.Errorf("the cap's refusal %q does not say %s", warned[1], want)
		}
	}
	// A window on, the next refusal of each kind is warned of with the count held back:
	// the other host's place given back, the leaky one is still past its share, and the
	// place is taken by a third host before a fourth comes.
	now = now.Add(failurelog.Every)
	_ = served[1].Close()
	accept(from("192.0.2.7", 5), from("192.0.2.12", 1), from("192.0.2.13", 1))
	got := log.take()
	if len(got) != 2 || !strings.Contains(got[0], "repeats=2") || !strings.Contains(got[1], "repeats=2") {
		t.Fatalf("after the window: %q, want two warnings counting 2 repeats each", got)
	}
}
