package natsd_test

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	neturl "net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// lineRecorder keeps the warnings and errors logged, with their repeats attribute.
type lineRecorder struct {
	mu    sync.Mutex
	lines []loggedLine
}

type loggedLine struct {
	msg     string
	repeats int64
}

func (h *lineRecorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h *lineRecorder) Handle(_ context.Context, r slog.Record) error {
	line := loggedLine{msg: r.Message}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "repeats" {
			line.repeats = a.Value.Int64()
		}
		return true
	})
	h.mu.Lock()
	h.lines = append(h.lines, line)
	h.mu.Unlock()
	return nil
}
func (h *lineRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *lineRecorder) WithGroup(string) slog.Handler      { return h }

func (h *lineRecorder) matching(substr string) []loggedLine {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []loggedLine
	for _, l := range h.lines {
		if strings.Contains(l.msg, substr) {
			out = append(out, l)
		}
	}
	return out
}

// failLogin opens a connection to the listener at host and sends what is no valid login;
// it returns once the server has answered and closed it (nats-server logs the failure
// before it answers).
func failLogin(t *testing.T, host, send string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", host, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(send)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("no refusal before the connection ended: %v", err)
		}
		if strings.HasPrefix(line, "-ERR") {
			return
		}
	}
}

// Anyone who reaches the listener can fail a login, no password needed, and nats-server
// logs an error for each: one process dialling in a loop wrote 6,000 lines (25 MB, each
// quoting a 4 KB user name) a second into foreman's log, which on a Mac is a file in /tmp
// with nothing to rotate it. Such lines are logged once per failurelog.Every with the
// count held back, cut short, as foreman logs its own refusals.
//
// Not parallel: it sets the log clock, which Start reads.
func TestStrangersFailedLoginsAreLoggedAtABoundedRate(t *testing.T) {
	var (
		mu  sync.Mutex
		now = time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)
	)
	// Restored at cleanup, registered before the server's: after its shutdown (a
	// deferred restore ran before it, unordered with a line the server still logged).
	t.Cleanup(natsd.SetLogClock(func() time.Time { mu.Lock(); defer mu.Unlock(); return now }))
	logs := &lineRecorder{}
	b := brokertest.New(t, withListener(func(c *natsd.Config) { c.Logger = slog.New(logs) }))
	u, err := neturl.Parse(b.Server.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	longUser := "CONNECT {\"user\":\"" + strings.Repeat("u", 4000) + "\",\"pass\":\"x\"}\r\nPING\r\n"
	const tries = 20
	for i := range tries {
		send := longUser
		if i%2 == 1 {
			send = "GET / HTTP/1.1\r\nHost: foreman\r\n\r\n"
		}
		failLogin(t, u.Host, send)
	}
	got := logs.matching("authentication error")
	if len(got) != 1 {
		t.Fatalf("%d failed logins logged %d lines, want 1 per %v", tries, len(got), failurelog.Every)
	}
	if n := len(got[0].msg); n > 600 {
		t.Errorf("the line of a failed login is %d bytes long: the peer's user name is not cut short", n)
	}
	mu.Lock()
	now = now.Add(failurelog.Every)
	mu.Unlock()
	failLogin(t, u.Host, longUser)
	got = logs.matching("authentication error")
	if len(got) != 2 || got[1].repeats != tries-1 {
		t.Fatalf("after the window: %d lines, the last with repeats=%d; want 2, the last with repeats=%d", len(got), got[len(got)-1].repeats, tries-1)
	}
}
