package failurelog

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
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

// Past maxKeys failures, those whose window has passed make room: a new failure is
// remembered then, and its repeat within the window is not logged. Failures still
// within their window are not forgotten for it: their repeats stay unlogged.
func TestWindowForgetsOnlyFailuresPastTheirWindow(t *testing.T) {
	now := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	w := Window{Now: func() time.Time { return now }}
	key := func(i int) string { return Key("500", errors.New("failure "+strings.Repeat("x", i))) }
	for i := range maxKeys / 2 {
		w.Admit(key(i))
	}
	now = now.Add(Every / 2)
	for i := maxKeys / 2; i < maxKeys; i++ { // the second half, younger
		w.Admit(key(i))
	}
	now = now.Add(Every / 2) // the first half's window has passed, not the second's
	fresh := Key("503", errors.New("job store cannot write"))
	if ok, _ := w.Admit(fresh); !ok {
		t.Fatal("a new failure not logged")
	}
	if ok, _ := w.Admit(fresh); ok {
		t.Error("the new failure's repeat logged: it was not remembered though old failures could make room")
	}
	if ok, _ := w.Admit(key(maxKeys - 1)); ok {
		t.Error("the repeat of a failure within its window logged: it was forgotten to make room")
	}
}

// The repeats counted in a failure's line are those since its last line, not since its
// first.
func TestWindowCountsRepeatsSinceTheLastLine(t *testing.T) {
	now := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	w := Window{Now: func() time.Time { return now }}
	down := Key("502", errors.New("ollama is unreachable"))
	w.Admit(down)
	for _, want := range []int{3, 2} {
		for range want {
			w.Admit(down)
		}
		now = now.Add(Every)
		if ok, n := w.Admit(down); !ok || n != want {
			t.Fatalf("after the window: %v with %d repeats, want logged with %d", ok, n, want)
		}
	}
}

// A failure's text is cut at a character boundary at 512 bytes, whatever its length: one
// of exactly 512 bytes, one whose 512th byte is within a character.
func TestKeyCutsALongFailureAtACharacter(t *testing.T) {
	exact := strings.Repeat("x", maxKeyText)
	if k := Key("", errors.New(exact)); k != " "+exact {
		t.Errorf("a failure of exactly %d bytes has key %q, want it whole", maxKeyText, k)
	}
	odd := "x" + strings.Repeat("é", maxKeyText) // byte 512 is the second of an é
	k := Key("", errors.New(odd))
	if !utf8.ValidString(k) || !strings.HasSuffix(k, "é") || len(k) > maxKeyText+1 {
		t.Errorf("key %q (%d bytes), want the text cut before the character it would split", k[len(k)-4:], len(k))
	}
}
