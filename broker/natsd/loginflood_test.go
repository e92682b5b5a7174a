package natsd_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// Anyone who reaches the NATS listener can make the server log a line per failed login:
// a scan or a guessing run wrote thousands of error lines a second. A minute's client
// lines are bounded; the first ones, with their addresses, are still there.
func TestFailedLoginsAreLoggedBounded(t *testing.T) {
	t.Parallel()
	logs := &allLines{}
	srv, err := natsd.Start(natsd.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0",
		ClientUser: clientUser, ClientPassword: clientPass, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	const tries = 3 * natsd.ClientLinesPerMinute
	for range tries {
		nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo(clientUser, "guess"), nats.NoReconnect(),
			nats.Timeout(10*time.Second))
		if err == nil {
			nc.Close()
			t.Fatal("a wrong password logged in")
		}
	}
	// The server logs a failed login before it tells the client (authViolation).
	if n := logs.count("authentication error"); n != natsd.ClientLinesPerMinute {
		t.Fatalf("%d failed logins logged %d lines, want %d (the minute's bound)", tries, n, natsd.ClientLinesPerMinute)
	}
}

// allLines keeps every log line's message, at every level.
type allLines struct {
	mu   sync.Mutex
	msgs []string
}

func (w *allLines) Enabled(context.Context, slog.Level) bool { return true }
func (w *allLines) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, r.Message)
	return nil
}
func (w *allLines) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *allLines) WithGroup(string) slog.Handler      { return w }

// count is the number of messages holding s.
func (w *allLines) count(s string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, m := range w.msgs {
		if strings.Contains(m, s) {
			n++
		}
	}
	return n
}
