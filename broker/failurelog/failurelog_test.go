package failurelog

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// The same failure again within Every is not logged, only counted; after it, its next
// line gives the count. Another failure is logged at once; failures told apart by their
// digits alone (a duration, a port) are one.
func TestWindowOncePerEvery(t *testing.T) {
	now := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	w := Window{Now: func() time.Time { return now }}
	full := Key("503", errors.New("job store cannot write: a stream failed a write"))
	if ok, n := w.Admit(full); !ok || n != 0 {
		t.Fatalf("first: %v %d", ok, n)
	}
	for i := range 5 {
		now = now.Add(time.Second)
		if ok, _ := w.Admit(full); ok {
			t.Fatalf("repeat %d within the window logged", i)
		}
	}
	for _, other := range []string{
		Key("502", errors.New("job store cannot write: a stream failed a write")),
		Key("503", errors.New("ollama is unreachable: connection refused")),
	} {
		if ok, _ := w.Admit(other); !ok {
			t.Fatalf("another failure (%s) not logged", other)
		}
	}
	now = now.Add(Every)
	if ok, n := w.Admit(full); !ok || n != 5 {
		t.Fatalf("after the window: %v with %d repeats, want logged with 5", ok, n)
	}
	if a, b := Key("502", errors.New("unreachable (for 12s: dial tcp 127.0.0.1:11434)")),
		Key("502", errors.New("unreachable (for 3s: dial tcp 127.0.0.1:8)")); a != b {
		t.Errorf("failures apart only in their digits have keys %q and %q", a, b)
	}
	if k := Key("", errors.New(strings.Repeat("é", 400))); len(k) > maxKeyText+2 || !strings.HasSuffix(k, "é") {
		t.Errorf("a long failure's key is %d bytes ending %q, want it cut at a character", len(k), k[len(k)-2:])
	}
}

// Past maxKeys distinct failures within the window every new one is logged: a distinct
// failure is news.
func TestWindowDistinctFailuresPastItsMemory(t *testing.T) {
	now := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	w := Window{Now: func() time.Time { return now }}
	for i := range maxKeys + 10 {
		if ok, _ := w.Admit(Key("500", errors.New("failure "+strings.Repeat("x", i)))); !ok {
			t.Fatalf("distinct failure %d not logged", i)
		}
	}
	if len(w.seen) > maxKeys {
		t.Fatalf("%d failures remembered, want at most %d", len(w.seen), maxKeys)
	}
}

// Two faults at once each get their line once per window: remembering one failure does
// not leave the other logged every time.
func TestWindowTwoFailuresAtOnce(t *testing.T) {
	now := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	w := Window{Now: func() time.Time { return now }}
	down := Key("502", errors.New("ollama is unreachable: connection refused"))
	full := Key("503", errors.New("job store cannot write: a stream failed a write"))
	for i := range 3 {
		for _, key := range []string{down, full} {
			if ok, _ := w.Admit(key); ok != (i == 0) {
				t.Fatalf("round %d, %s: logged %v, want only the first of each logged", i, key, ok)
			}
			now = now.Add(time.Second)
		}
	}
}

// levels is the lines of a text log without their time and error.
func levels(logs *bytes.Buffer) []string {
	var out []string
	for l := range strings.Lines(logs.String()) {
		_, l, _ = strings.Cut(strings.TrimSpace(l), "level=")
		out = append(out, strings.Replace(l, ` err="nats: connection closed"`, "", 1))
	}
	return out
}

// A loop failing once a second during an outage warns once, then once per Every with
// the repeats (the rest at debug), and says once that it works again; a failure after
// that is news again.
func TestLoopWarnsOncePerEveryAndSaysWhenItWorks(t *testing.T) {
	var logs bytes.Buffer
	now := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var l Loop
	l.Window.Now = func() time.Time { return now }
	down := errors.New("nats: connection closed")
	l.Worked(log, "select") // nothing failed: nothing to say
	for range 12 {
		l.Failed(log, "select", down)
		now = now.Add(time.Second)
	}
	l.Worked(log, "select")
	l.Worked(log, "select")
	l.Failed(log, "select", down)
	want := []string{"WARN msg=select"}
	for range 9 {
		want = append(want, "DEBUG msg=select")
	}
	want = append(want, "WARN msg=select repeats=9", "DEBUG msg=select", `INFO msg="select: works again" failures=12`, "WARN msg=select")
	got := levels(&logs)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("lines\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
