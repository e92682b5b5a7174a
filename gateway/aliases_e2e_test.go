package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Against the real Ollama: aliases made through foreman's relay of Ollama's aliases
// route resolve through foreman as Ollama resolves them (ADR-0068). A greedy answer
// under the alias is the target model's own, not the model's of the same name's
// neighbour, and the job is queued under the target.
func TestE2EAliasedModelRunsItsTarget(t *testing.T) {
	b := newE2EBundle(t, nil)
	ctx := testCtx(t, 3*time.Minute)
	b.warm(t, ctx, "tiny-b")
	aliases := []string{
		`{"alias":"foreman-e2e-fast","target":"tiny-b"}`,
		`{"alias":"foreman-e2e-claude-","target":"tiny-b","prefix_matching":true}`,
	}
	t.Cleanup(func() {
		// Ollama keeps its aliases in a file beside its models: leave none behind.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, a := range aliases {
			var v ollama.Alias
			_ = json.Unmarshal([]byte(a), &v)
			del, _ := json.Marshal(map[string]string{"alias": v.Alias})
			req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, b.Target+ollama.AliasesPath, bytes.NewReader(del))
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
	})
	for _, a := range aliases {
		if r := post(t, ctx, b.URL, ollama.AliasesPath, []byte(a)); r.Status != http.StatusOK {
			t.Fatalf("POST %s %s through foreman: %d %s", ollama.AliasesPath, a, r.Status, r.Body)
		}
	}

	content := func(body []byte) string {
		var v struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		}
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("answer %s: %v", body, err)
		}
		return v.Message.Content
	}
	direct := post(t, ctx, b.Target, "/api/chat", greedyBody("/api/chat", "tiny-b", "Say hello.", "false", 8))
	other := post(t, ctx, b.Target, "/api/chat", greedyBody("/api/chat", "tiny-a", "Say hello.", "false", 8))
	if direct.Status != http.StatusOK || other.Status != http.StatusOK || content(direct.Body) == content(other.Body) {
		t.Fatalf("tiny-a and tiny-b must answer differently for the test to tell them apart: %s / %s", direct.Body, other.Body)
	}
	for _, name := range []string{"foreman-e2e-fast", "Foreman-E2E-Fast:latest", "foreman-e2e-claude-sonnet-4-5"} {
		via := post(t, ctx, b.URL, "/api/chat", greedyBody("/api/chat", name, "Say hello.", "false", 8))
		alone := post(t, ctx, b.Target, "/api/chat", greedyBody("/api/chat", name, "Say hello.", "false", 8))
		if via.Status != http.StatusOK || alone.Status != http.StatusOK || content(via.Body) != content(direct.Body) || content(alone.Body) != content(direct.Body) {
			t.Errorf("%s: foreman %d %s, Ollama %d %s; tiny-b says %q", name, via.Status, via.Body, alone.Status, alone.Body, content(direct.Body))
			continue
		}
		j := waitRecord(t, ctx, b.Store, via.Header.Get(HeaderJobID), func(j *broker.Job) bool { return j.State.Terminal() })
		if j.Model != "tiny-b:latest" {
			t.Errorf("%s: job of %q, want tiny-b's", name, j.Model)
		}
	}

	// The list through foreman is Ollama's.
	viaList, directList := getBody(t, ctx, b.URL+ollama.AliasesPath), getBody(t, ctx, b.Target+ollama.AliasesPath)
	if !bytes.Equal(viaList, directList) || !strings.Contains(string(viaList), "foreman-e2e-claude-") {
		t.Errorf("aliases through foreman %s, Ollama's %s", viaList, directList)
	}
}

func getBody(t *testing.T, ctx context.Context, url string) []byte {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return buf.Bytes()
}
