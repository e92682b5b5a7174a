package gateway

import (
	"net/http"
	"testing"
	"time"
)

// Ollama 0.17.4 runs the legacy completions and the image routes on its generate
// handler, which answers a name it cannot parse, an empty or blank one included, with
// 404 "model '<name>' not found"; only its chat handler says "model is required" (400).
// Measured against the real Ollama: a generate call without a model is that 404, and
// /v1/completions with a blank model a 404 api_error. A client that tells a missing
// model by its 404 must see the same through foreman.
func TestGenerateRoutesBlankModelNotFound(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	for _, c := range []struct {
		path, body string
		status     int
		want       string // the exact body
	}{
		{"/api/generate", `{"prompt":"hi"}`, 404, `{"error":"model '' not found"}`},
		{"/api/generate", `{"model":"","prompt":"hi"}`, 404, `{"error":"model '' not found"}`},
		{"/api/generate", `{"model":" ","prompt":"hi"}`, 404, `{"error":"model ' ' not found"}`},
		{"/v1/completions", `{"model":"","prompt":"x"}`, 404,
			`{"error":{"message":"model '' not found","type":"api_error","param":null,"code":null}}` + "\n"},
		{"/v1/images/generations", `{"model":" ","prompt":"x"}`, 404,
			`{"error":{"message":"model ' ' not found","type":"api_error","param":null,"code":null}}` + "\n"},
		// The chat handler and those on top of it keep their 400.
		{"/api/chat", `{"model":""}`, 400, `{"error":"model is required"}`},
		// (With a message: Ollama's OpenAI layer refuses an empty messages first.)
		{"/v1/chat/completions", `{"model":" ","messages":[{"role":"user","content":"x"}]}`, 400,
			`{"error":{"message":"model is required","type":"api_error","param":null,"code":null}}` + "\n"},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		if got.Status != c.status || string(got.Body) != c.want {
			t.Errorf("%s %s: %d %q, want %d %q", c.path, c.body, got.Status, got.Body, c.status, c.want)
		}
	}
	for _, c := range b.Fake.Calls() {
		if c.Method == http.MethodPost {
			t.Errorf("a refused request reached the target: %+v", c)
		}
	}
}
