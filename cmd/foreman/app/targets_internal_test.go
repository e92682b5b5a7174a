package app

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// The URL published to the other foremen carries no credentials at all (not even
// redacted ones, which they would send).
func TestPublishedURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"http://studio.lan:11434":             "http://studio.lan:11434",
		"http://steve:hunter2@studio:11434/x": "http://studio:11434/x",
		"https://tok@mini.lan":                "https://mini.lan",
	} {
		if got := publishedURL(in); got != want {
			t.Errorf("publishedURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// A target's entry outlives the gap between two polls of a hung target (the first ends at
// its timeout, the next starts at the following tick), whatever the interval: with a 2s
// interval it lived 6s, and a hung Mac's models were "not found" half the time.
func TestTargetEntryOutlivesAHungPoll(t *testing.T) {
	t.Parallel()
	for _, poll := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 30 * time.Second} {
		if ttl, gap := targetTTL(poll), ollama.DefaultPollTimeout+poll; ttl <= gap {
			t.Errorf("poll interval %s: entry lives %s, not past the %s between two polls of a hung target", poll, ttl, gap)
		}
	}
	if ttl := targetTTL(30 * time.Second); ttl != 90*time.Second {
		t.Errorf("default poll interval: entry lives %s, want 90s as before", ttl)
	}
}

// The protected endpoints of the published targets: a target at a loopback URL counts on
// the machine addresses its foreman published beside it; each endpoint once.
func TestEndpointsOfTargets(t *testing.T) {
	t.Parallel()
	got := endpointsOf([]broker.Target{
		{Name: "mac-a", URL: "http://127.0.0.1:11434", Addrs: []string{"192.168.1.20"}},
		{Name: "mac-b", URL: "http://mac-b.lan:11434", Addrs: []string{"192.168.1.30"}},
		{Name: "mac-c", URL: "http://192.168.1.20:11434"},
	})
	if want := []string{"127.0.0.1:11434", "192.168.1.20:11434", "mac-b.lan:11434"}; !slices.Equal(got, want) {
		t.Fatalf("endpoints %v, want %v", got, want)
	}
}

// The clients of the other targets are those of the targets still live: at a poll, the
// client of a URL no entry has any more (withdrawn, or its Mac's address changed) is
// dropped, where each stayed for the process's life with its transport and idle
// connections. A request under way on a dropped client ends as it would have.
func TestClientsOfGoneTargetsAreDropped(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	a := &App{cfg: Config{TargetName: "mac-a", OllamaURL: "http://127.0.0.1:1"}, store: b.Store, log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	publish := func(name, url string) {
		t.Helper()
		if err := b.Store.PublishTarget(ctx, broker.Target{Name: name, URL: url, Reachable: true, Models: []string{"beta:latest"}}); err != nil {
			t.Fatal(err)
		}
	}
	client := func(url string) ollama.Client {
		t.Helper()
		c, err := a.targetClient(url)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	const n = 8 // targets at loopback URLs never dialed: a client dials only for a request
	for i := range n {
		publish(fmt.Sprintf("mac-%d", i), fmt.Sprintf("http://127.0.0.1:%d", 20001+i))
		client(fmt.Sprintf("http://127.0.0.1:%d", 20001+i))
	}
	busy := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "beta:latest"}))
	publish("mac-busy", busy.URL)
	release := busy.Hold("beta")
	defer release()
	streamed := make(chan error, 1)
	go func() {
		_, err := client(busy.URL).Stream(ctx, "/api/chat", []byte(`{"model":"beta","messages":[{"role":"user","content":"hi"}]}`),
			func([]byte) error { return nil })
		streamed <- err
	}()
	if err := busy.WaitStarted(ctx, "beta", 1); err != nil {
		t.Fatal(err)
	}

	// Half the targets go, mac-0 moves to another port, and the busy one goes mid-request.
	for i := 1; i < n; i += 2 {
		b.RemoveTarget(t, fmt.Sprintf("mac-%d", i))
	}
	publish("mac-0", "http://127.0.0.1:20100")
	b.RemoveTarget(t, "mac-busy")
	kept := client("http://127.0.0.1:20003")
	a.publishTarget(ctx, polledSnap("alpha")) // a poll

	a.clientsMu.Lock()
	got := slices.Sorted(maps.Keys(a.clients))
	same := a.clients["http://127.0.0.1:20003"] == kept
	a.clientsMu.Unlock()
	if want := []string{"http://127.0.0.1:20003", "http://127.0.0.1:20005", "http://127.0.0.1:20007"}; !slices.Equal(got, want) {
		t.Errorf("clients after the poll: %v, want those of the live targets %v", got, want)
	}
	if !same {
		t.Error("the client of a live target was replaced")
	}
	release()
	if err := <-streamed; err != nil {
		t.Errorf("the request under way on a dropped client: %v", err)
	}
}

// The worker's Config.Elsewhere counts only another foreman's reachable target that lists
// the model (ADR-0066): not the own entry, not an unreachable one, and never on a store
// of its own.
func TestOfferedElsewhere(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	a := &App{cfg: Config{TargetName: "mac-a"}, store: b.Store, log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tg := range []broker.Target{
		{Name: "mac-a", Reachable: true, Models: []string{"own:latest"}},
		{Name: "mac-b", Reachable: true, Models: []string{"beta:latest"}},
		{Name: "mac-c", Reachable: false, Models: []string{"gamma:latest"}},
	} {
		if err := b.Store.PublishTarget(ctx, tg); err != nil {
			t.Fatal(err)
		}
	}
	// mac-d's foreman withdrew its presence (as at a stop; a kill lets it lapse) while
	// its entry lives on.
	gone, err := broker.Open(ctx, broker.Config{Conn: b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	if err := gone.PublishTarget(ctx, broker.Target{Name: "mac-d", Reachable: true, Models: []string{"delta:latest"}}); err != nil {
		t.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	stop()
	if err := gone.Announce(actx); err != nil { // ended at once: withdraws its presence
		t.Fatal(err)
	}
	for model, want := range map[string]bool{"beta": true, "BETA:latest": true, "own": false, "gamma": false, "delta": false} {
		if got := a.offeredElsewhere(ctx, model); got != want {
			t.Errorf("offeredElsewhere(%q) = %v, want %v", model, got, want)
		}
	}
	own := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.Exclusive = true }))
	if err := own.Store.PublishTarget(ctx, broker.Target{Name: "mac-b", Reachable: true, Models: []string{"beta:latest"}}); err != nil {
		t.Fatal(err)
	}
	a.store = own.Store
	if a.offeredElsewhere(ctx, "beta") {
		t.Error("offeredElsewhere on a store of its own: true, want false")
	}
}

// syncLog is a log's text, written from several goroutines.
type syncLog struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// count is the number of lines with all of parts.
func (l *syncLog) count(parts ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for line := range strings.Lines(l.buf.String()) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// During a NATS outage every poll's writes fail (the target's entry, its model list):
// each is warned of once (the rest at debug, counted in the next warning 10 s on), and
// said once to work again when NATS is back.
func TestPollWritesWarnOncePerWindowDuringAnOutage(t *testing.T) {
	t.Parallel()
	o := brokertest.NewOutage(t, nil)
	var logs syncLog
	a := &App{cfg: Config{TargetName: "mac-a", OllamaURL: "http://127.0.0.1:1", JobTTL: time.Hour}, store: o.Store,
		log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o.Cut(t)
	for i := range 5 {
		a.onPoll(ctx, polledSnap(fmt.Sprintf("model-%d", i))) // a new list each time: it is written
	}
	for _, msg := range []string{`msg="publish target inventory"`, `msg="remember the target's model list"`} {
		if n, all := logs.count("level=WARN", msg), logs.count(msg); n != 1 || all != 5 {
			t.Errorf("%s: %d warnings of %d lines, want 1 of 5", msg, n, all)
		}
	}
	o.Heal(t)
	for i := 0; logs.count("works again") < 2; i++ {
		if ctx.Err() != nil {
			t.Fatalf("no poll's writes worked again after the outage:\n%s", logs.buf.String())
		}
		a.onPoll(ctx, polledSnap(fmt.Sprintf("back-%d", i)))
	}
	for _, msg := range []string{`msg="publish target inventory: works again"`, `msg="remember the target's model list: works again"`} {
		if n := logs.count("level=INFO", msg, "failures="); n != 1 {
			t.Errorf("%s: %d lines, want 1:\n%s", msg, n, logs.buf.String())
		}
	}
}

// The default target name is the host name made a valid one: a host name longer than 64
// characters (macOS allows 255), or holding other characters, stopped a foreman whose
// operator never set FOREMAN_TARGET_NAME ("not a name: 1 to 64 letters, ...").
func TestTargetNameOfAHostName(t *testing.T) {
	long := strings.Repeat("studio-", 20) + "local"
	for _, c := range []struct{ host, want string }{
		{"mac-studio.local", "mac-studio.local"},
		{"", "ollama"},
		{"...", "ollama"},
		{long, strings.TrimRight(long[:64], "-")},
		{"Jo's Mac", "Jo-s-Mac"},
		{"mac.local.", "mac.local"},
	} {
		got := targetNameOf(c.host)
		if got != c.want {
			t.Errorf("targetNameOf(%q) = %q, want %q", c.host, got, c.want)
		}
		if len(got) > maxTargetName || strings.Trim(got, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") != "" {
			t.Errorf("targetNameOf(%q) = %q: not a valid FOREMAN_TARGET_NAME", c.host, got)
		}
	}
}
