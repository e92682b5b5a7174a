package gateway

import (
	"net/http"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Each body is decoded once, and the answers to bad ones are worded exactly as before:
// clients and their tests match on them.
func TestBodyErrorWording(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	cases := []struct{ path, body, want string }{
		{"/api/chat", `[1]`, "invalid JSON body: json: cannot unmarshal array into Go value of type map[string]json.RawMessage"},
		{"/api/chat", `"x"`, "invalid JSON body: json: cannot unmarshal string into Go value of type map[string]json.RawMessage"},
		{"/api/chat", `{"model":`, "invalid JSON body: unexpected end of JSON input"},
		// A member of another type on chat and generate is Ollama's decoder's words
		// (ADR-0141, ADR-0142).
		{"/api/chat", `{"model":5}`, "json: cannot unmarshal number into Go struct field ChatRequest.model of type string"},
		{"/api/generate", `{"model":"tiny-a","stream":"yes"}`, "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool"},
		{"/api/show", `[1]`, "invalid JSON body: json: cannot unmarshal array into Go value of type map[string]json.RawMessage"},
		{"/api/show", `{"model":`, "invalid JSON body: unexpected end of JSON input"},
		{"/api/embed", `{"model":5}`, "invalid JSON body: decode model field: json: cannot unmarshal number into Go struct field .model of type string"},
		{"/api/show", `{"name":true}`, "invalid JSON body: decode model field: json: cannot unmarshal bool into Go struct field .name of type string"},
	}
	for _, c := range cases {
		resp, body := b.request(t, http.MethodPost, c.path, []byte(c.body))
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s %s: status %d, want 400", c.path, c.body, resp.StatusCode)
			continue
		}
		if msg, _ := errorText(body); msg != c.want {
			t.Errorf("%s %s: error %q, want %q", c.path, c.body, msg, c.want)
		}
	}
}

// The model is read from the member the target reads on each route (Ollama 0.17.4,
// server/routes.go): /api/show falls back to the legacy "name", the embedding routes read
// "model" alone, so a body naming only "name" there is refused before it reaches the
// target without a model.
func TestModelMemberPerRoute(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	for _, p := range []string{"/api/embed", "/api/embeddings", "/v1/embeddings"} {
		resp, body := b.request(t, http.MethodPost, p, []byte(`{"name":"tiny-embed","input":"x","prompt":"x"}`))
		wantError(t, resp, body, http.StatusBadRequest, "model is required")
	}
	for _, c := range b.Fake.Calls() {
		if c.Path != "/api/tags" && c.Path != "/api/ps" && c.Path != ollama.AliasesPath {
			t.Errorf("a body without a model reached the target: %s %s", c.Method, c.Path)
		}
	}
	resp, body := b.request(t, http.MethodPost, "/api/show", []byte(`{"name":"tiny-a"}`))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/api/show by name: %d %s", resp.StatusCode, body)
	}
}
