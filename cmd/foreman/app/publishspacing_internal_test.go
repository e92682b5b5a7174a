package app

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Polls made on demand (a refusal confirmed against the model list, ADR-0129; a call for
// a model the list lacks) may come once per call: an unchanged entry is published once
// per publishSpacing, not at each of them. Before, every refused POST /jobs of a flood
// made a synced write of the target's entry (about 2 KB each) besides its poll.
func TestAnUnchangedTargetEntryIsNotPublishedAtEachPoll(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	a := &App{cfg: Config{TargetName: "studio", OllamaURL: "http://studio.lan:11434", JobTTL: time.Hour},
		store: b.Store, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	revision := func() uint64 { return keyRevision(ctx, t, b, broker.TargetsBucket, "target.studio") }

	// Ollama lists models of the same modified_at in an order of its own from one poll
	// to the next: the same entry.
	listed := func(models ...string) ollama.Snapshot {
		snap := polledSnap(models...)
		var raw []string
		for _, m := range models {
			raw = append(raw, `{"name":"`+m+`","digest":"sha256:`+m+`"}`)
		}
		snap.TagsRaw = []byte(`{"models":[` + strings.Join(raw, ",") + `]}`)
		return snap
	}
	a.onPoll(ctx, listed("a", "b"))
	first := revision()
	for i := range 20 {
		if i%2 == 0 {
			a.onPoll(ctx, listed("b", "a"))
		} else {
			a.onPoll(ctx, listed("a", "b"))
		}
	}
	if got := revision(); got != first {
		t.Errorf("20 polls finding the same entry at once, its models in either order, published it %d times more, want none", got-first)
	}
	a.onPoll(ctx, listed("a", "b", "c"))
	changed := revision()
	if changed == first {
		t.Fatal("a changed entry was not published")
	}
	a.published.at = time.Now().Add(-publishSpacing)
	a.onPoll(ctx, listed("a", "b", "c"))
	if got := revision(); got == changed {
		t.Error("an unchanged entry publishSpacing old was not published again")
	}
}
