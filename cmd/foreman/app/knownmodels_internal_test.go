package app

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// polledSnap is the snapshot of a successful poll listing models.
func polledSnap(models ...string) ollama.Snapshot {
	tags := &ollama.ListResponse{}
	for _, m := range models {
		tags.Models = append(tags.Models, ollama.ListModelResponse{Name: m})
	}
	return ollama.Snapshot{Polled: true, Tags: tags, LastPoll: time.Now()}
}

// The list is written when a poll finds it changed, not at every poll; an unchanged list
// again once it is an eighth of the job TTL old, so that it outlives the bucket's TTL;
// nothing for a failed poll; and a write that fails is logged, and made by the next poll.
func TestRememberModelsWritesOnChange(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	var logs bytes.Buffer
	a := &App{cfg: Config{TargetName: "studio", OllamaURL: "http://user:pw@studio.lan:11434", JobTTL: 24 * time.Hour},
		store: b.Store, log: slog.New(slog.NewTextHandler(&logs, nil))}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	revision := func() uint64 { return keyRevision(ctx, t, b, broker.KnownModelsBucket, "target.studio") }

	a.rememberModels(ctx, polledSnap("b", "A:latest", "a"))
	first := revision()
	k, ok, err := b.Store.RememberedModels(ctx, "studio")
	if err != nil || !ok || k.URL != "http://studio.lan:11434" || strings.Join(k.Models, ",") != "a:latest,b:latest" {
		t.Fatalf("stored %+v, %v, %v", k, ok, err)
	}
	a.rememberModels(ctx, polledSnap("a", "b"))
	failed := polledSnap("c")
	failed.Err = errors.New("connection refused")
	a.rememberModels(ctx, failed)
	if got := revision(); got != first {
		t.Fatalf("an unchanged list or a failed poll was written: revision %d, then %d", first, got)
	}
	a.rememberModels(ctx, polledSnap("a", "b", "c"))
	changed := revision()
	if changed == first {
		t.Fatal("a changed list was not written")
	}
	a.known.written = time.Now().Add(-3*time.Hour - time.Minute) // an eighth of 24h ago
	a.rememberModels(ctx, polledSnap("a", "b", "c"))
	if got := revision(); got == changed {
		t.Fatal("an unchanged list an eighth of the job TTL old was not written again")
	}
	// Changed aliases are written with the models, unchanged ones are not written again.
	aliased := polledSnap("a", "b", "c")
	aliased.Aliases = []ollama.Alias{{Alias: "fast", Target: "a"}}
	unaliased := revision()
	a.rememberModels(ctx, aliased)
	withAlias := revision()
	if k, _, err := b.Store.RememberedModels(ctx, "studio"); withAlias == unaliased || err != nil || len(k.Aliases) != 1 || k.Aliases[0] != aliased.Aliases[0] {
		t.Fatalf("changed aliases: revision %d, then %d; stored %+v, %v", unaliased, withAlias, k, err)
	}
	a.rememberModels(ctx, aliased)
	if got := revision(); got != withAlias {
		t.Fatal("unchanged aliases were written again")
	}

	// A restart reads the list with its aliases: a first poll finding them unchanged
	// writes nothing.
	restarted := &App{cfg: a.cfg, store: b.Store, log: a.log}
	if models, aliases := restarted.rememberedModels(ctx); len(models) != 3 || len(aliases) != 1 {
		t.Fatalf("after a restart: remembered %v, %v", models, aliases)
	}
	restarted.rememberModels(ctx, aliased)
	if got := revision(); got != withAlias {
		t.Fatal("a restart's first poll wrote unchanged aliases again")
	}

	// A write that fails (NATS gone) is logged and not taken for done.
	before := a.known
	b.Conn.Close()
	a.rememberModels(ctx, polledSnap("d"))
	if !strings.Contains(logs.String(), "remember the target's model list") || a.known.written != before.written {
		t.Fatalf("failed write: known %+v, log:\n%s", a.known, logs.String())
	}
}

// A worker runs a remembered model only as one its own target has: while that target
// has not answered a poll, a reachable other target that has the model gets it (on a
// shared NATS, ADR-0029).
func TestRunsModelLeavesRememberedModelsToAReachableTarget(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t) // not exclusive, as a shared NATS
	mac := ollamatest.New(t)
	client, err := ollama.NewClient(ollama.ClientConfig{BaseURL: mac.URL})
	if err != nil {
		t.Fatal(err)
	}
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: client, Remembered: []string{"alpha"}})
	a := &App{cfg: Config{TargetName: "mac-a"}, store: b.Store, inv: inv, log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Store.PublishTarget(ctx, broker.Target{Name: "mac-b", URL: "http://127.0.0.1:1", Reachable: true, Models: []string{"alpha:latest"}}); err != nil {
		t.Fatal(err)
	}
	if a.runsModel(ctx, "alpha") {
		t.Error("runs a remembered model that a reachable target has, before its own target answered a poll")
	}
	// mac-b's foreman stops: its entry stays, unreachable (ADR-0075).
	if err := b.Store.StopTarget(ctx, broker.Target{Name: "mac-b", URL: "http://127.0.0.1:1", Models: []string{"alpha:latest"}}); err != nil {
		t.Fatal(err)
	}
	if !a.runsModel(ctx, "alpha") {
		t.Error("leaves a remembered model no other reachable target has")
	}
}

// keyRevision is the revision of key in bucket of b's store.
func keyRevision(ctx context.Context, t *testing.T, b *brokertest.Bundle, bucket, key string) uint64 {
	t.Helper()
	kv, err := b.JetStream(t).KeyValue(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	return e.Revision()
}
