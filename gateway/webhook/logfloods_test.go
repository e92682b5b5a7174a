package webhook

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// record is one log line a test looks at: its level, its message and its attributes
// written out.
type record struct {
	level slog.Level
	msg   string
	attrs string
}

func (r record) String() string { return r.level.String() + " " + r.msg + r.attrs }

// records is a slog handler keeping every line, for a test to count.
type records struct {
	mu    *sync.Mutex
	lines *[]record
	with  string
}

func newRecords() records { return records{mu: &sync.Mutex{}, lines: &[]record{}} }

func (h records) Enabled(context.Context, slog.Level) bool { return true }
func (h records) Handle(_ context.Context, r slog.Record) error {
	attrs := h.with
	r.Attrs(func(a slog.Attr) bool { attrs += fmt.Sprintf(" %s=%q", a.Key, a.Value.String()); return true })
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.lines = append(*h.lines, record{r.Level, r.Message, attrs})
	return nil
}
func (h records) WithAttrs(as []slog.Attr) slog.Handler {
	for _, a := range as {
		h.with += fmt.Sprintf(" %s=%q", a.Key, a.Value.String())
	}
	return h
}
func (h records) WithGroup(string) slog.Handler { return h }

// all returns the lines so far.
func (h records) all() []record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]record(nil), *h.lines...)
}

// count counts the lines at level with message msg.
func (h records) count(level slog.Level, msg string) int {
	n := 0
	for _, r := range h.all() {
		if r.level == level && r.msg == msg {
			n++
		}
	}
	return n
}

// A receiver down, and one answering 500, fail every attempt of every event sent them.
// Each gets one line at info for its failing retries per failurelog.Every (the others at
// debug), naming it, not one per attempt: a receiver down for a night under a busy
// foreman would otherwise be 16 lines for each event. Each event given up is its own
// warning, with its job. No line shows the path or query of a webhook URL, where
// receivers keep their token (Slack's and Discord's URLs, "?token="): only the scheme,
// host and port.
func TestFailingReceiversAreLoggedOncePerWindowWithoutTheirToken(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	down := "http://" + ollamatest.ClosedAddr(t) + "/hooks/PATHSECRET?token=QUERYSECRET"
	failing := newReceiver(t, func(int, hit) int { return http.StatusInternalServerError })
	erring := failing.URL + "/hooks/PATHSECRET?token=QUERYSECRET"
	logs := newRecords()
	cfg := fastConfig(b.Store)
	cfg.Attempts = 4
	cfg.Logger = slog.New(logs)
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 6, 3, 0, 0, 0, time.UTC)
	d.failures.Now = func() time.Time { return now } // the window never passes
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	const jobs = 5
	var ids []string
	for range jobs {
		for _, u := range []string{down, erring} {
			j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: u, Events: []broker.State{broker.StateQueued}}})
			ids = append(ids, j.ID)
		}
	}
	for _, id := range ids {
		waitLog(t, b.Store, id, func(l []broker.DeliveryAttempt) bool { return len(l) == cfg.Attempts })
	}
	eventually(t, 10*time.Second, "every event given up", func() bool {
		return logs.count(slog.LevelWarn, "webhook delivery failed; giving up") == len(ids)
	})

	retries := 0
	for _, r := range logs.all() {
		if strings.Contains(r.String(), "SECRET") {
			t.Errorf("a line shows a webhook URL's path or query: %s", r)
		}
		if !strings.HasPrefix(r.msg, "webhook delivery failed") {
			continue
		}
		if !strings.Contains(r.attrs, `receiver="http://127.0.0.1:`) {
			t.Errorf("a failed delivery's line does not name its receiver: %s", r)
		}
		if strings.Contains(r.attrs, `err="<nil>"`) {
			t.Errorf("a failed delivery's line has an empty error: %s", r)
		}
		if r.msg == "webhook delivery failed; will retry" && r.level == slog.LevelInfo {
			retries++
		}
	}
	// Every attempt but the last of each event failed and is retried: 15 of them, two
	// receivers, each failing one way.
	if retries != 2 {
		t.Errorf("%d retries logged at info for %d failed attempts of 2 receivers, want 2:\n%s",
			retries, len(ids)*(cfg.Attempts-1), dumpRecords(logs.all()))
	}
}

func dumpRecords(rs []record) string {
	var b strings.Builder
	for _, r := range rs {
		b.WriteString(r.String())
		b.WriteByte('\n')
	}
	return b.String()
}
