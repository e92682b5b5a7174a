package ollama_test

import (
	"errors"
	"net/http"
	"slices"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// Models remembered from an earlier run answer HasModel until a poll succeeds, through
// failed polls too, as a failed poll's last known list does; they never make the target
// polled or reachable, and the first successful poll replaces them with what it lists.
func TestInventoryRememberedModelsUntilAPollSucceeds(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "tiny-a"}))
	fake.SetDown(true)
	inv := ollama.NewInventory(ollama.InventoryConfig{
		Client: newClient(t, fake.URL), Remembered: []string{"Tiny-A", "gone:7b", "tiny-a:latest", " "},
	})
	check := func(when string) {
		t.Helper()
		for name, want := range map[string]bool{"tiny-a": true, "GONE:7b": true, "gone": false, "nope": false, "": false} {
			if got := inv.HasModel(name); got != want {
				t.Errorf("%s: HasModel(%q) = %v, want %v", when, name, got, want)
			}
		}
		snap := inv.Snapshot()
		if snap.Polled || snap.Tags != nil || snap.TagsRaw != nil || snap.Ps != nil || inv.Reachable() || inv.Loaded() != nil {
			t.Errorf("%s: remembered models made the target look polled: %+v", when, snap)
		}
		if got := snap.Models(); !slices.Equal(got, []string{"tiny-a:latest", "gone:7b"}) {
			t.Errorf("%s: Models = %v", when, got)
		}
	}
	check("before any poll")
	if inv.Degraded() {
		t.Error("degraded before any poll")
	}

	var ce *ollama.ConnectionError
	if err := inv.Refresh(testCtx(t)); !errors.As(err, &ce) {
		t.Fatalf("poll of a down target: %v", err)
	}
	check("after a failed poll")
	if !inv.Degraded() {
		t.Error("not degraded after a failed poll")
	}

	fake.SetDown(false)
	if err := inv.Refresh(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	snap := inv.Snapshot()
	if !inv.Reachable() || !snap.Polled || snap.Remembered != nil || !slices.Equal(snap.Models(), []string{"tiny-a:latest"}) {
		t.Fatalf("after a good poll: %+v, models %v", snap, snap.Models())
	}
	if !inv.HasModel("tiny-a") || inv.HasModel("gone:7b") {
		t.Error("the polled list does not replace the remembered one")
	}

	// A failed poll after that keeps the polled list, not the remembered one.
	fake.SetDown(true)
	_ = inv.Refresh(testCtx(t))
	if inv.Reachable() || !inv.HasModel("tiny-a") || inv.HasModel("gone:7b") {
		t.Error("a failed poll after a good one brought the remembered list back")
	}
}

// Aliases remembered from an earlier run resolve, by the remembered models (a model of
// the name wins over an alias), until a poll of this run reads the target's own: a call
// naming one is queued under its model while the target is down after a restart. A poll
// that lists the models but fails to read the aliases keeps them.
func TestInventoryRememberedAliasesUntilAPollReadsThem(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "tiny-a"}, ollamatest.Model{Name: "tiny-b"}))
	fake.SetAlias(ollama.Alias{Alias: "fast", Target: "tiny-a"})
	fake.SetDown(true)
	remembered := []ollama.Alias{
		{Alias: "fast", Target: "tiny-b"},
		{Alias: "claude-sonnet-", Target: "tiny-a", PrefixMatching: true},
		{Alias: "tiny-", Target: "tiny-b", PrefixMatching: true},
	}
	inv := ollama.NewInventory(ollama.InventoryConfig{
		Client: newClient(t, fake.URL), Remembered: []string{"tiny-a", "tiny-b"}, RememberedAliases: remembered,
	})
	resolves := func(when string, want map[string]string) {
		t.Helper()
		for name, target := range want {
			if got, ok := inv.ResolveAlias(name); got != target || ok != (target != "") {
				t.Errorf("%s: ResolveAlias(%q) = %q, %v; want %q", when, name, got, ok, target)
			}
		}
	}
	before := map[string]string{"fast": "tiny-b:latest", "claude-sonnet-4-5": "tiny-a:latest", "tiny-c": "tiny-b:latest", "tiny-a": "", "slow": ""}
	resolves("before any poll", before)
	if got := inv.Snapshot().Aliases; !slices.Equal(got, remembered) {
		t.Errorf("before any poll: Snapshot.Aliases = %+v, want the remembered ones", got)
	}
	if err := inv.Refresh(testCtx(t)); err == nil {
		t.Fatal("a poll of a down target succeeded")
	}
	resolves("after a failed poll", before)

	fake.SetDown(false)
	fake.FailNextOn(ollama.AliasesPath, 1, ollamatest.FailStatus(http.StatusInternalServerError, "unsupported router config version 2"))
	if err := inv.Refresh(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	resolves("after a poll that could not read the aliases", before)
	if err := inv.Refresh(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	resolves("after a good poll", map[string]string{"fast": "tiny-a:latest", "claude-sonnet-4-5": "", "tiny-c": ""})
	if got := inv.Snapshot().Aliases; !slices.Equal(got, []ollama.Alias{{Alias: "fast", Target: "tiny-a"}}) {
		t.Errorf("after a good poll: Snapshot.Aliases = %+v, want the target's", got)
	}
}
