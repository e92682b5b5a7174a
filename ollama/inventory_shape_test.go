package ollama_test

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// An Ollama upgraded to answer a member of its model lists in another shape (a size as a
// string, an expiry that is no RFC 3339 time, a count as a string) failed every poll:
// foreman read each entry into Ollama v0.17's types, and a member it does not even read
// made the whole list "not JSON". The target stayed degraded for good, /healthz said so,
// its model list froze at the last poll before the upgrade (a model pulled since was in
// none), and /api/ps through foreman answered 502. The lists are read for their names.
func TestInventoryReadsListsWhoseOtherMembersChangedShape(t *testing.T) {
	t.Parallel()
	tags := []byte(`{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","modified_at":"yesterday","size":"2.0 GB","digest":"abc","details":{}},` +
		`{"name":"qwen3:8b","model":"qwen3:8b","modified_at":"2025-01-02T03:04:05Z","size":5200000000,"digest":"def"}]}`)
	ps := []byte(`{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","size":2019393189,"digest":"abc","expires_at":"never","size_vram":"all","context_length":"4096"}]}`)
	var mu sync.Mutex
	var lists map[string][]byte
	serve := func(l map[string][]byte) {
		mu.Lock()
		defer mu.Unlock()
		lists = l
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		body, ok := lists[r.URL.Path]
		mu.Unlock()
		if !ok {
			http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	serve(map[string][]byte{"/api/tags": tags, "/api/ps": ps})
	c := newClient(t, srv.URL)
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: c})
	if err := inv.Refresh(testCtx(t)); err != nil {
		t.Fatalf("poll: %v, want the lists read", err)
	}
	snap := inv.Snapshot()
	if snap.Degraded || !inv.Reachable() {
		t.Errorf("degraded %v reachable %v, want a target that answered", snap.Degraded, inv.Reachable())
	}
	if !inv.HasModel("llama3.2") || !inv.HasModel("qwen3:8b") {
		t.Errorf("models %v, want llama3.2:latest and qwen3:8b", snap.Models())
	}
	if l := inv.Loaded(); !slices.Equal(l, []string{"llama3.2:latest"}) {
		t.Errorf("loaded %v, want [llama3.2:latest]", l)
	}
	if !bytes.Equal(snap.TagsRaw, tags) || !bytes.Equal(snap.PsRaw, ps) {
		t.Errorf("raw lists changed: %s / %s", snap.TagsRaw, snap.PsRaw)
	}
	// The entry that kept Ollama's shape keeps its members.
	if m := snap.Tags.Models[1]; m.Size != 5200000000 || m.ModifiedAt.IsZero() {
		t.Errorf("qwen3:8b entry %+v, want its size and time", m)
	}
	// A live /api/ps reads the same way.
	if p, _, err := c.Ps(testCtx(t)); err != nil || len(p.Models) != 1 || p.Models[0].Name != "llama3.2:latest" {
		t.Errorf("Ps: %+v, %v", p, err)
	}

	// Names that are no strings, or a list that is none, are no model list.
	for _, bad := range []string{`{"models":[{"name":7}]}`, `{"models":{"name":"x"}}`, `[]`} {
		serve(map[string][]byte{"/api/tags": []byte(bad), "/api/ps": ps})
		if err := inv.Refresh(testCtx(t)); !errors.Is(err, ollama.ErrBadAnswer) {
			t.Errorf("tags %s: poll error %v, want ErrBadAnswer", bad, err)
		}
	}
}
