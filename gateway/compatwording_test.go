package gateway

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

// A path or method Ollama's router does not take is answered as that router (gin)
// answers it, in plain text, on Ollama's own paths: clients read the text as the
// message. An OpenAI-shaped error there was shown by ollama-js (its systemone, on
// /v1/systemone) as "[object Object]", and the Anthropic SDK (count_tokens) and the
// OpenAI SDK (responses.retrieve) gave it a type Ollama never sends. foreman's own paths
// keep their JSON errors.
func TestRouterMissAsOllama(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	for _, c := range []struct {
		method, path string
		status       int
		text, allow  string
	}{
		{http.MethodPost, "/v1/systemone", 404, "404 page not found", ""},
		{http.MethodGet, "/v1/responses/resp_123", 404, "404 page not found", ""},
		{http.MethodPost, "/v1/messages/count_tokens", 404, "404 page not found", ""},
		{http.MethodGet, "/api/nothing-here", 404, "404 page not found", ""},
		{http.MethodGet, "/api", 404, "404 page not found", ""},
		{http.MethodGet, "/api/chat", 405, "405 method not allowed", "POST"},
		{http.MethodPut, "/v1/models", 405, "405 method not allowed", "GET, HEAD"},
	} {
		resp, out := b.request(t, c.method, c.path, nil)
		if resp.StatusCode != c.status || string(out) != c.text || resp.Header.Get("Content-Type") != "text/plain" ||
			resp.Header.Get("Allow") != c.allow {
			t.Errorf("%s %s: %d %q (Content-Type %q, Allow %q), want %d %q as text/plain, Allow %q", c.method, c.path,
				resp.StatusCode, out, resp.Header.Get("Content-Type"), resp.Header.Get("Allow"), c.status, c.text, c.allow)
		}
	}
	resp, out := b.request(t, http.MethodGet, "/jobs/01J00000000000000000000000/nothing", nil)
	wantError(t, resp, out, http.StatusNotFound, "404 page not found")
}

// On /v1 Ollama's OpenAI layer words its own checks of a body (bad JSON, the image
// routes' members) "invalid_request_error", and passes on what its handler behind refuses
// (no model, a name it cannot take) as an "api_error", 400 or not. foreman refuses both
// before the target sees them, each with Ollama's type: the OpenAI SDKs hand it to their
// callers as error.type.
func TestV1RefusalTypesAsOllama(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	for _, c := range []struct{ path, body, typ, msg string }{
		{"/v1/chat/completions", `{"model":"","messages":[{"role":"user","content":"x"}]}`, "api_error", "model is required"},
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}]}`, "api_error", "model is required"},
		{"/v1/chat/completions", `{"model":"tiny-a:","messages":[{"role":"user","content":"x"}]}`, "api_error", "model is required"},
		{"/v1/chat/completions", `{"model":" tiny-a","messages":[{"role":"user","content":"x"}]}`, "api_error", "invalid model name"},
		{"/v1/responses", `{"model":"","input":"x"}`, "api_error", "model is required"},
		{"/v1/completions", `{"model":"","prompt":"x"}`, "api_error", "model is required"},
		{"/v1/embeddings", `{"model":"","input":"x"}`, "api_error", "model is required"},
		{"/v1/chat/completions", `{"model": "tiny-a",`, "invalid_request_error", "invalid JSON body"},
		{"/v1/images/generations", `{"model":"x"}`, "invalid_request_error", "prompt is required"},
		{"/v1/images/generations", `{"prompt":"x"}`, "invalid_request_error", "model is required"},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		var e struct {
			Error struct{ Message, Type string } `json:"error"`
		}
		if got.Status != http.StatusBadRequest || json.Unmarshal(got.Body, &e) != nil || e.Error.Type != c.typ ||
			len(e.Error.Message) < len(c.msg) || e.Error.Message[:len(c.msg)] != c.msg {
			t.Errorf("%s %s: %d %s, want 400 with type %s, message %q...", c.path, c.body, got.Status, got.Body, c.typ, c.msg)
		}
	}
}
