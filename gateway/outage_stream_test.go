package gateway

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// hungPollsBundle is a gateway with SyncOutageWait set to wait (its logger to log and
// its body wait to bodyWait, when set) whose inventory polls every 100ms, each given up
// after 300ms: a target that stops answering is an outage within a poll or two.
func hungPollsBundle(t *testing.T, wait time.Duration, log *slog.Logger, bodyWait time.Duration, fake ...ollamatest.Option) *testBundle {
	t.Helper()
	b := newTestBundle(t, withFake(fake...), withPolling(100*time.Millisecond),
		withInventory(func(c *ollama.InventoryConfig) { c.PollTimeout = 300 * time.Millisecond }),
		withGateway(func(c *Config) {
			c.SyncOutageWait, c.bodyWait = wait, bodyWait
			if log != nil {
				c.Logger = log
			}
		}))
	eventually(t, 10*time.Second, "the first poll", func() bool { return b.Inv.Snapshot().Polled })
	return b
}

// hangPolls makes the fake accept the inventory's polls and never answer them.
func hangPolls(b *testBundle) {
	b.Fake.FailNextOn("/api/tags", 1<<20, ollamatest.Hang)
	b.Fake.FailNextOn("/api/ps", 1<<20, ollamatest.Hang)
}

// A pass-through stream that stalls because Ollama hung as a whole (it sends nothing
// more and answers no poll) is cut once the outage has lasted SyncOutageWait and the
// stream has been silent as long: the client's response is aborted, so a pull cut short
// cannot pass for a finished one. Before, the watch ended with the answer's headers and
// such a stream held its client forever.
func TestPassThroughStreamStalledInAnOutageIsCut(t *testing.T) {
	t.Parallel()
	logs := &logRecorder{}
	b := hungPollsBundle(t, time.Second, slog.New(logs), 0)
	b.Fake.FailNextOn("/api/pull", 1, ollamatest.StallMidStream) // two lines, then nothing
	resp := b.send(t, http.MethodPost, "/api/pull", []byte(`{"model":"new-model"}`))
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	for i := range 2 {
		line, err := rd.ReadBytes('\n')
		if resp.StatusCode != http.StatusOK || err != nil {
			t.Fatalf("line %d of the pull: %d %q %v", i, resp.StatusCode, line, err)
		}
	}

	hangPolls(b)
	// The client's own deadline (30s) would end the read too, with another error.
	rest, err := io.ReadAll(rd)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("the stalled pull ended with %v after %q, want it aborted (unexpected EOF)", err, rest)
	}
	if logs.count("FOREMAN_SYNC_OUTAGE_WAIT") == 0 {
		t.Error("the cut was not logged with its reason")
	}
}

// A pass-through stream that delivers is answering, however long the polls go
// unanswered (a big pull's progress while a busy Ollama leaves /api/tags waiting): it
// runs on to its end, though the outage has lasted SyncOutageWait three times over and a
// call arriving then is refused. Its lines come a twentieth of the outage's bound apart;
// one read may wait a minute (a loaded machine may hold the fake's writes for seconds).
func TestPassThroughStreamDeliveringInAnOutageRunsOn(t *testing.T) {
	t.Parallel()
	const wait = time.Second
	b := hungPollsBundle(t, wait, nil, time.Minute, ollamatest.WithGatePull(), ollamatest.WithPullProgress(1000))
	ctx := testCtx(t, 30*time.Second)
	// The answer's headers come with its first line.
	first := make(chan error, 1)
	go func() { first <- b.Fake.PullStep(ctx) }()
	resp := b.send(t, http.MethodPost, "/api/pull", []byte(`{"model":"new-model"}`))
	defer resp.Body.Close()
	if err := <-first; err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("the pull: %d, first step %v", resp.StatusCode, err)
	}
	rd := bufio.NewReader(resp.Body)
	lines := 0
	read := func() string {
		t.Helper()
		line, err := rd.ReadBytes('\n')
		if err != nil {
			t.Fatalf("line %d of the pull: %v after %q", lines, err, line)
		}
		lines++
		return string(line)
	}
	// next lets one more line out and reads it. A pull that was cut takes no step: the
	// step's bound says so rather than the test's.
	next := func() string {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := b.Fake.PullStep(sctx); err != nil {
			t.Fatalf("line %d of the pull: no pull took it (%v): was it cut?", lines, err)
		}
		return read()
	}
	read()

	hangPolls(b)
	tick := time.NewTicker(wait / 20)
	defer tick.Stop()
	for {
		down := b.Inv.Snapshot().DownSince
		if !down.IsZero() && time.Since(down) > 3*wait {
			break
		}
		<-tick.C
		if line := next(); !strings.Contains(line, `"completed"`) {
			t.Fatalf("the pull's progress ran out before the polls had failed for 3×%s: %s", wait, line)
		}
	}
	refused, out := b.request(t, http.MethodGet, "/api/version", nil)
	wantError(t, refused, out, http.StatusBadGateway, "FOREMAN_SYNC_OUTAGE_WAIT")

	for line := ""; !strings.Contains(line, `"success"`); {
		line = next()
	}
	if rest, err := io.ReadAll(rd); err != nil || len(rest) > 0 {
		t.Fatalf("after the pull's last line: %v %q, want its end", err, rest)
	}
}
