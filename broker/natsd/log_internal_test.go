package natsd

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// A minute that dropped client lines is told by the first line logged after it, with the
// count; lines about the server itself are never dropped.
func TestClientLinesDroppedAreCounted(t *testing.T) {
	var out bytes.Buffer
	now := time.Date(2026, 12, 6, 3, 0, 0, 0, time.UTC)
	l := &logAdapter{log: slog.New(slog.NewTextHandler(&out, nil)), now: func() time.Time { return now }}
	for range clientLinesPerMinute + 7 {
		l.Errorf("%s - %s", "10.0.0.7:51234 - cid:12", "authentication error")
	}
	l.Warnf("JetStream resource limits exceeded for server") // the server's own: kept
	if n := strings.Count(out.String(), "authentication error"); n != clientLinesPerMinute {
		t.Fatalf("%d lines logged in the first minute, want %d:\n%s", n, clientLinesPerMinute, out.String())
	}
	if !strings.Contains(out.String(), "resource limits exceeded") {
		t.Fatalf("a line about the server was dropped:\n%s", out.String())
	}
	now = now.Add(time.Minute)
	out.Reset()
	l.Errorf("%s - %s", "10.0.0.9:40000 - cid:99", "TLS handshake error: EOF")
	if !strings.Contains(out.String(), "7 more lines about client connections were not logged in the minute before") ||
		!strings.Contains(out.String(), "TLS handshake error") {
		t.Fatalf("the next minute's first line:\n%s", out.String())
	}
}
