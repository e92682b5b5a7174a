package gateway

import (
	"context"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// A model's capabilities, once read, serve its chats however old they are: once older
// than capsTTL, one look-up reads them again in the background (ADR-0129). A chat
// waited for that /api/show, the first chat of every capsTTL: tens of milliseconds for a
// large model on a real Ollama, up to showTimeout for one whose /api/show hangs.
func TestStaleCapabilitiesDoNotHoldAChat(t *testing.T) {
	t.Parallel()
	ht := &heldShows{gate: make(chan struct{})}
	b := newQueuedBundle(t, nil, withGateway(func(c *Config) { ht.Client, c.Target = c.Target, ht }))
	ctx := testCtx(t, 30*time.Second)
	chat := func(what string) {
		t.Helper()
		if r := post(t, ctx, b.URL, "/api/chat", chatBody("tiny-a", what, "false")); r.Status != http.StatusOK {
			t.Fatalf("%s chat: %d %s", what, r.Status, r.Body)
		}
	}
	chat("first")
	if n := ht.shows.Load(); n != 1 {
		t.Fatalf("%d capability look-ups for the first chat, want 1", n)
	}

	// The entry grows old; the next look-up of it is held.
	b.GW.caps.mu.Lock()
	e := b.GW.caps.m["tiny-a:latest"]
	if e == nil || !e.done() {
		b.GW.caps.mu.Unlock()
		t.Fatal("tiny-a's capabilities were not kept")
	}
	old := &capsEntry{ready: make(chan struct{}), caps: e.caps, at: time.Now().Add(-capsTTL), digest: e.digest}
	close(old.ready)
	b.GW.caps.m["tiny-a:latest"] = old
	b.GW.caps.mu.Unlock()
	ht.hold.Store(true)

	chat("second")
	if n := ht.gaveUp.Load(); n != 0 {
		t.Fatalf("the second chat waited for the held /api/show until it gave up (%d)", n)
	}
	eventually(t, 10*time.Second, "the look-up again in the background", func() bool { return ht.shows.Load() == 2 })

	// Its answer replaces the old one; until then the old one serves, one look-up at a time.
	chat("third")
	if n := ht.shows.Load(); n != 2 {
		t.Errorf("%d capability look-ups, want 2: one at a time", n)
	}
	close(ht.gate)
	eventually(t, 10*time.Second, "the new answer in place", func() bool {
		b.GW.caps.mu.Lock()
		defer b.GW.caps.mu.Unlock()
		e := b.GW.caps.m["tiny-a:latest"]
		return e != old && e != nil && e.done() && !e.stale()
	})
	chat("fourth")
	if n, g := ht.shows.Load(), ht.gaveUp.Load(); n != 2 || g != 0 {
		t.Errorf("%d capability look-ups (%d given up), want 2", n, g)
	}
}

// heldShows counts the gateway's /api/show calls and, once hold is set, holds them
// until gate is closed; gaveUp counts those whose context ended first.
type heldShows struct {
	ollama.Client
	hold          atomic.Bool
	gate          chan struct{}
	shows, gaveUp atomic.Int32
}

func (h *heldShows) Do(ctx context.Context, method, path string, header http.Header, body io.Reader) (*http.Response, error) {
	if path == "/api/show" {
		h.shows.Add(1)
		if h.hold.Load() {
			select {
			case <-h.gate:
			case <-ctx.Done():
				h.gaveUp.Add(1)
				return nil, ctx.Err()
			}
		}
	}
	return h.Client.Do(ctx, method, path, header, body)
}
