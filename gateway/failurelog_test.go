package gateway

import (
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The same failure again within failureLogEvery is not logged, only counted; after it,
// its next line gives the count. Another failure, or the same at another status, is
// logged at once; failures told apart by their digits alone (a duration, a port) are one.
func TestFailureLogOncePerWindow(t *testing.T) {
	now := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	l := failureLog{now: func() time.Time { return now }}
	full := failureKey(503, errors.New("job store cannot write: a stream failed a write"))
	if ok, n := l.admit(full); !ok || n != 0 {
		t.Fatalf("first: %v %d", ok, n)
	}
	for i := range 5 {
		now = now.Add(time.Second)
		if ok, _ := l.admit(full); ok {
			t.Fatalf("repeat %d within the window logged", i)
		}
	}
	for _, other := range []string{
		failureKey(502, errors.New("job store cannot write: a stream failed a write")),
		failureKey(503, errors.New("ollama is unreachable: connection refused")),
	} {
		if ok, _ := l.admit(other); !ok {
			t.Fatalf("another failure (%s) not logged", other)
		}
	}
	now = now.Add(failureLogEvery)
	if ok, n := l.admit(full); !ok || n != 5 {
		t.Fatalf("after the window: %v with %d repeats, want logged with 5", ok, n)
	}
	if a, b := failureKey(502, errors.New("unreachable (for 12s: dial tcp 127.0.0.1:11434)")),
		failureKey(502, errors.New("unreachable (for 3s: dial tcp 127.0.0.1:8)")); a != b {
		t.Errorf("failures apart only in their digits have keys %q and %q", a, b)
	}
}

// Past maxFailureKeys distinct failures within the window every new one is logged: a
// distinct failure is news.
func TestFailureLogDistinctFailuresPastItsMemory(t *testing.T) {
	now := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	l := failureLog{now: func() time.Time { return now }}
	for i := range maxFailureKeys + 10 {
		if ok, _ := l.admit(failureKey(500, errors.New("failure "+strings.Repeat("x", i)))); !ok {
			t.Fatalf("distinct failure %d not logged", i)
		}
	}
	if len(l.seen) > maxFailureKeys {
		t.Fatalf("%d failures remembered, want at most %d", len(l.seen), maxFailureKeys)
	}
}

// An Ollama that is down fails every pass-through call with a 502: a client polling it
// (a UI asking /api/version every second, a script retrying at once) gets its 502s, and
// the operator's log one error line for them, not one per call.
func TestRepeatedFailureLoggedOnce(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b := newTestBundle(t, withGateway(func(c *Config) { c.Logger = log }))
	b.Fake.SetDown(true)
	for i := range 20 {
		resp, body := b.request(t, http.MethodGet, "/api/version", nil)
		if resp.StatusCode < 500 {
			t.Fatalf("call %d with Ollama down: %d %s", i, resp.StatusCode, body)
		}
	}
	n := 0
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, "level=ERROR") && strings.Contains(l, `msg="request failed"`) {
			n++
		}
	}
	if n == 0 || n > 2 {
		t.Fatalf("%d error lines for 20 calls failing alike, want one (two if the outage's refusal took over):\n%s", n, logs.String())
	}
}

// Two faults at once (Ollama down, and the store refusing writes) each get their error
// line once per window: remembering one failure does not leave the other logged on every
// request.
func TestFailureLogTwoFailuresAtOnce(t *testing.T) {
	now := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	l := failureLog{now: func() time.Time { return now }}
	down := failureKey(502, errors.New("ollama is unreachable: connection refused"))
	full := failureKey(503, errors.New("job store cannot write: a stream failed a write"))
	for i := range 3 {
		for _, key := range []string{down, full} {
			if ok, _ := l.admit(key); ok != (i == 0) {
				t.Fatalf("round %d, %s: logged %v, want only the first of each logged", i, key, ok)
			}
			now = now.Add(time.Second)
		}
	}
}

// The error line of a failure that came again within the window counts the repeats not
// logged, so the operator sees how often it failed.
func TestRepeatedFailureLineCountsTheRepeats(t *testing.T) {
	var logs syncBuffer
	s := &Server{log: slog.New(slog.NewTextHandler(&logs, nil))}
	now := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	s.failures.now = func() time.Time { return now }
	down := errors.New("ollama is unreachable: connection refused")
	for range 4 {
		s.logFailure("request failed", http.StatusBadGateway, down)
	}
	now = now.Add(failureLogEvery)
	s.logFailure("request failed", http.StatusBadGateway, down)
	var errs []string
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, "level=ERROR") {
			errs = append(errs, l)
		}
	}
	if len(errs) != 2 || strings.Contains(errs[0], "repeats=") || !strings.Contains(errs[1], "repeats=3") {
		t.Fatalf("error lines %q, want two, the second with repeats=3", errs)
	}
}
