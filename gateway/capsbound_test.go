package gateway

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// A caller that makes model names and removes them again, over and over (`ollama cp` of a
// new name, a chat with it, `ollama rm`), leaves no capabilities behind for each: past
// capsMax entries the cache drops those of models the target lists no more, and keeps
// those of the models it has.
func TestCapsCacheForgetsRemovedModels(t *testing.T) {
	t.Parallel()
	const bound = 8
	b := newQueuedBundle(t, nil, withGateway(func(c *Config) { c.capsMax = bound }))
	ctx := testCtx(t, 2*time.Minute)
	chat := func(model string) {
		t.Helper()
		if got := post(t, ctx, b.URL, "/api/chat", chatBody(model, "hi", "false")); got.Status != http.StatusOK {
			t.Fatalf("chat with %s: %d %s", model, got.Status, got.Body)
		}
	}
	chat("tiny-a")
	for i := range 5 * bound {
		name := fmt.Sprintf("churn-%d", i)
		if resp, out := b.request(t, http.MethodPost, "/api/copy", fmt.Appendf(nil, `{"source":"tiny-b","destination":%q}`, name)); resp.StatusCode != http.StatusOK {
			t.Fatalf("copy to %s: %d %s", name, resp.StatusCode, out)
		}
		chat(name)
		if resp, out := b.request(t, http.MethodDelete, "/api/delete", fmt.Appendf(nil, `{"model":%q}`, name)); resp.StatusCode != http.StatusOK {
			t.Fatalf("delete %s: %d %s", name, resp.StatusCode, out)
		}
	}
	b.GW.caps.mu.Lock()
	n := len(b.GW.caps.m)
	b.GW.caps.mu.Unlock()
	if n > bound {
		t.Errorf("the capabilities of %d models are remembered after %d models were made and removed; want at most %d", n, 5*bound, bound)
	}
	if _, _, ok := b.GW.cachedCapabilities("tiny-a"); !ok {
		t.Errorf("the capabilities of tiny-a, which the target has, were dropped")
	}
}
