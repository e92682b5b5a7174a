package gateway

import (
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A model's digest in the own model list is compared on every chat (knownCapabilities,
// the hot path): one whose digest does not change, one the own list lacks (known only to
// another Mac) and one no Mac has are looked up at most once however many chats name
// them, and a change of digest is one look-up more, not one per chat (ADR-0129).
func TestCapabilitiesDigestMakesNoShowPerChat(t *testing.T) {
	t.Parallel()
	var otherShows atomic.Int32
	other := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "elsewhere:latest"}))
	ht := &heldShows{gate: make(chan struct{})}
	b := newTestBundle(t, withGateway(func(c *Config) {
		ht.Client, c.Target = c.Target, ht
		c.TargetName = "own"
		c.TargetClient = func(u string) (ollama.Client, error) {
			cl, err := ollama.NewClient(ollama.ClientConfig{BaseURL: u})
			return countShows{Client: cl, n: &otherShows}, err
		}
	}))
	ctx := testCtx(t, 30*time.Second)
	if err := b.Broker.Store.PublishTarget(ctx, broker.Target{Name: "other", URL: other.URL, Reachable: true,
		Models: []string{"elsewhere:latest"}}); err != nil {
		t.Fatal(err)
	}
	many := func(model string) {
		t.Helper()
		for range 50 {
			if _, err := b.GW.knownCapabilities(ctx, model); err != nil && model != "nowhere" {
				t.Fatalf("%s: %v", model, err)
			}
			b.GW.cachedCapabilities(model)
		}
	}
	for _, spelling := range []string{"tiny-a", "Tiny-A:latest", "library/tiny-a", "registry.ollama.ai/library/tiny-a:latest"} {
		many(spelling)
	}
	if n := ht.shows.Load(); n != 1 {
		t.Errorf("%d /api/show calls for 200 chats of tiny-a, want 1", n)
	}
	many("elsewhere")
	many("Elsewhere:latest")
	if n := otherShows.Load(); n != 1 {
		t.Errorf("%d /api/show calls to the other Mac for 100 chats of a model only it has, want 1", n)
	}
	many("nowhere")
	if n, o := ht.shows.Load(), otherShows.Load(); n != 1 || o != 1 {
		t.Errorf("%d and %d /api/show calls after chats of a model no Mac has, want 1 and 1", n, o)
	}

	// Pulled again: another digest, one look-up more.
	b.Fake.AddModel(ollamatest.Model{Name: "tiny-a:latest", Digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"})
	if err := b.Inv.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	many("tiny-a")
	if n := ht.shows.Load(); n != 2 {
		t.Errorf("%d /api/show calls after tiny-a's digest changed, want 2", n)
	}
}
