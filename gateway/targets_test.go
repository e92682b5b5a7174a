package gateway

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// The own target's /v1/models is read whole to append the other targets' models: a list
// over the bound (a target that streams without end, a gzip bomb) is a 502, not a heap
// that grows with it, nor the list passed on as though it were whole.
func TestOpenAIModelsOverLimitIsBadUpstream(t *testing.T) {
	t.Parallel()
	const limit = 4 << 10
	b := newTestBundle(t, withGateway(func(c *Config) {
		c.TargetName = "own"
		c.TargetClient = func(u string) (ollama.Client, error) { return ollama.NewClient(ollama.ClientConfig{BaseURL: u}) }
		c.metadataMax = limit
	}))
	tags := `{"models":[{"name":"elsewhere:latest","model":"elsewhere:latest","modified_at":"2025-01-02T03:04:05Z"}]}`
	err := b.Broker.Store.PublishTarget(testCtx(t, 10*time.Second), broker.Target{Name: "other", URL: "http://127.0.0.1:1",
		Reachable: true, Models: []string{"elsewhere:latest"}, Tags: json.RawMessage(tags)})
	if err != nil {
		t.Fatal(err)
	}

	// Within the bound the list is the own target's with the other's model after it.
	resp, body := b.request(t, http.MethodGet, "/v1/models", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"elsewhere:latest"`) {
		t.Fatalf("within the bound: %d %s", resp.StatusCode, body)
	}

	// A well-formed list, only longer than the bound.
	var big strings.Builder
	big.WriteString(`{"object":"list","data":[`)
	for i := 0; big.Len() <= 2*limit; i++ {
		if i > 0 {
			big.WriteString(",")
		}
		big.WriteString(`{"id":"model-` + strings.Repeat("x", 100) + `","object":"model","created":0,"owned_by":"library"}`)
	}
	big.WriteString(`]}`)
	b.Fake.FailNextOn("/v1/models", 1, ollamatest.BadAnswer("application/json", big.String()))
	resp, body = b.request(t, http.MethodGet, "/v1/models", nil)
	var e struct {
		Error struct{ Message string } `json:"error"`
	}
	if resp.StatusCode != http.StatusBadGateway || json.Unmarshal(body, &e) != nil || !strings.Contains(e.Error.Message, "model list is over") {
		t.Fatalf("over the bound: %d %.300s", resp.StatusCode, body)
	}
}

// With several Macs, a call for a model this foreman's Ollama lacks while the other Macs'
// lists cannot be read (NATS gone) is 503, to retry: not Ollama's 404, on which the
// ollama CLI pulls the model and a UI shows it missing, when another Mac may well have it.
func TestModelElsewhereWhileTheTargetsCannotBeReadIs503(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) {
		c.TargetName = "own"
		c.TargetClient = func(u string) (ollama.Client, error) { return ollama.NewClient(ollama.ClientConfig{BaseURL: u}) }
	}))
	b.Broker.Stop()
	resp, body := b.request(t, http.MethodPost, "/api/chat", []byte(`{"model":"elsewhere","messages":[{"role":"user","content":"hi"}]}`))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "model lists cannot be read") {
		t.Fatalf("call for another Mac's model with NATS gone: %d %s (Retry-After %q), want 503 to retry", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	// The own Ollama's model still queues and gets the store's own answer.
	if resp, body := b.request(t, http.MethodPost, "/api/chat", []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`)); resp.StatusCode == http.StatusNotFound {
		t.Fatalf("call for the own model with NATS gone: %d %s", resp.StatusCode, body)
	}
}
