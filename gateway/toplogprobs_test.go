package gateway

import (
	"net/http"
	"testing"
	"time"
)

// Ollama's chat and generate handlers refuse a top_logprobs outside 0..20 before they read
// the model (v0.17.4 server/routes.go), and so every route on top of them that passes
// one on: /v1/chat/completions its top_logprobs, /v1/completions its logprobs when
// positive. foreman refuses it first too, in Ollama's words, rather than with the
// model's 404 or its own "model is required"; nothing is queued. Measured against the
// real Ollama.
func TestTopLogprobsRefusedBeforeTheModel(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	const gin = "application/json; charset=utf-8"
	native := `{"error":"top_logprobs must be between 0 and 20"}`
	oai := `{"error":{"message":"top_logprobs must be between 0 and 20","type":"api_error","param":null,"code":null}}` + "\n"
	for _, c := range []struct {
		path, body string
		want       string
	}{
		{"/api/generate", `{"model":"ghost","top_logprobs":21}`, native},
		{"/api/generate", `{"model":"","top_logprobs":50}`, native},
		{"/api/generate", `{"model":"tiny-a","prompt":"x","top_logprobs":-1}`, native},
		{"/api/chat", `{"model":"ghost","top_logprobs":-1,"messages":[]}`, native},
		{"/api/chat", `{"top_logprobs":21}`, native},
		{"/v1/chat/completions", `{"model":"ghost","messages":[{"role":"user","content":"x"}],"top_logprobs":50}`, oai},
		{"/v1/chat/completions", `{"model":"","messages":[{"role":"user","content":"x"}],"top_logprobs":50}`, oai},
		{"/v1/completions", `{"model":"ghost","prompt":"x","logprobs":50}`, oai},
		// A null after a value leaves Ollama's int as it was (encoding/json).
		{"/api/generate", `{"model":"ghost","top_logprobs":21,"top_logprobs":null}`, native},
		{"/v1/chat/completions", `{"model":"ghost","messages":[{"role":"user","content":"x"}],"top_logprobs":21,"top_logprobs":null}`, oai},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		if got.Status != http.StatusBadRequest || string(got.Body) != c.want || (c.want == native && got.CType != gin) {
			t.Errorf("%s %s: %d %q %q\nwant 400 %q", c.path, c.body, got.Status, got.CType, got.Body, c.want)
		}
	}
	// In range, or a logprobs of 0 or less (no log probabilities), the model is looked at.
	for _, c := range []struct{ path, body string }{
		{"/api/generate", `{"model":"ghost","top_logprobs":20}`},
		{"/api/chat", `{"model":"ghost","top_logprobs":0,"messages":[]}`},
		{"/v1/completions", `{"model":"ghost","prompt":"x","logprobs":-5}`},
		// /v1/completions' logprobs is a pointer: a null after a value drops it.
		{"/v1/completions", `{"model":"ghost","prompt":"x","logprobs":50,"logprobs":null}`},
		{"/api/generate", `{"model":"ghost","top_logprobs":21,"top_logprobs":5}`},
		{"/v1/responses", `{"model":"ghost","input":"x","top_logprobs":50}`},
	} {
		if got := post(t, ctx, b.URL, c.path, []byte(c.body)); got.Status != http.StatusNotFound {
			t.Errorf("%s %s: %d %s, want the model's 404", c.path, c.body, got.Status, got.Body)
		}
	}
	for _, call := range b.Fake.Calls() {
		if call.Method == http.MethodPost && call.Path != "/api/show" {
			t.Errorf("a refused request reached the target: %s %s", call.Path, call.Body)
		}
	}
	if n, _ := b.Broker.Store.QueueLen(ctx); n != 0 {
		t.Errorf("refused bodies queued %d jobs", n)
	}
}
