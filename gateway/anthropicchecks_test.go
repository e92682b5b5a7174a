package gateway

import (
	"net/http"
	"regexp"
	"testing"
	"time"
)

// Ollama's Anthropic layer (v0.17.4 AnthropicMessagesMiddleware) refuses a body without
// a model, then one without a positive max_tokens, then one without messages, before its
// chat handler looks at anything: foreman refuses the same in that order, as Ollama
// words and frames them (no newline after the object), without queueing a job that could
// only fail. Measured against the real Ollama.
func TestMessagesChecksBeforeQueueing(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	const gin = "application/json; charset=utf-8"
	ant := func(msg string) string {
		return `{"type":"error","error":{"type":"invalid_request_error","message":"` + msg + `"},"request_id":"req_ID"}`
	}
	reqID := regexp.MustCompile(`"req_[0-9a-f]{24}"`)
	for _, c := range []struct{ body, want string }{
		{`{"max_tokens":0,"messages":[]}`, ant("model is required")},
		{`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`, ant("max_tokens is required and must be positive")},
		{`{"model":"tiny-a","max_tokens":0,"messages":[{"role":"user","content":"hi"}]}`, ant("max_tokens is required and must be positive")},
		{`{"model":"tiny-a","max_tokens":-1,"messages":[]}`, ant("max_tokens is required and must be positive")},
		{`{"model":"tiny-a","max_tokens":null,"messages":[{"role":"user","content":"hi"}]}`, ant("max_tokens is required and must be positive")},
		{`{"model":"ghost","max_tokens":0,"messages":[{"role":"user","content":"hi"}]}`, ant("max_tokens is required and must be positive")},
		{`{"model":"tiny-a","max_tokens":4,"messages":[]}`, ant("messages is required")},
		{`{"model":"tiny-a","max_tokens":4}`, ant("messages is required")},
		{`{"model":"tiny-a","max_tokens":4,"messages":null}`, ant("messages is required")},
		{`{"model":"ghost","max_tokens":4,"messages":[ ]}`, ant("messages is required")},
		{`{"model":"tiny-a","max_tokens":4,"stream":true,"messages":[]} x`, ant("messages is required")},
	} {
		got := post(t, ctx, b.URL, "/v1/messages", []byte(c.body))
		body := reqID.ReplaceAllString(string(got.Body), `"req_ID"`)
		if got.Status != http.StatusBadRequest || got.CType != gin || body != c.want {
			t.Errorf("%s: %d %q %q\nwant 400 %q %q", c.body, got.Status, got.CType, body, gin, c.want)
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

// Ollama decodes max_tokens into an int, which a null after a value leaves as it was
// (encoding/json): the Anthropic layer sees the value and runs the call. foreman runs it
// too. Measured against the real Ollama (200 with a 3-token answer).
func TestMessagesMaxTokensNullAfterAValue(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	body := `{"model":"tiny-a","max_tokens":3,"max_tokens":null,"messages":[{"role":"user","content":"hi"}]}`
	got := post(t, ctx, b.URL, "/v1/messages", []byte(body))
	if got.Status != http.StatusOK {
		t.Fatalf("%s: %d %s, want 200 as Ollama answers", body, got.Status, got.Body)
	}
}

// A 400 of Ollama's Anthropic layer itself for a queued job (a max_tokens it cannot
// decode, a message it cannot convert: checks foreman leaves to it) is relayed as that
// layer writes its refusals, and as foreman writes the ones it makes before queueing:
// gin's framing, a charset and no newline after the object. Its handler's refusals (a
// model that cannot chat) keep its writer's json.Encoder framing. Both measured against
// the real Ollama. A layer refusal came back as a handler's, with a newline and no
// charset.
func TestMessagesLayerRefusalOfAQueuedJobIsFramedAsTheLayers(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	const gin, encoder = "application/json; charset=utf-8", "application/json"
	reqID := regexp.MustCompile(`"req_[0-9a-f]{24}"`)
	for _, c := range []struct{ body, ctype, want string }{
		{`{"model":"tiny-a","max_tokens":"x","messages":[{"role":"user","content":"hi"}]}`, gin,
			`{"type":"error","error":{"type":"invalid_request_error","message":"json: cannot unmarshal string into Go struct field MessagesRequest.max_tokens of type int"},"request_id":"req_ID"}`},
		{`{"model":"tiny-a","max_tokens":4,"stream":true,"messages":[{"role":"user","content":5}]}`, gin,
			`{"type":"error","error":{"type":"invalid_request_error","message":"invalid message content type: float64"},"request_id":"req_ID"}`},
		{`{"model":"tiny-embed","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`, encoder,
			`{"type":"error","error":{"type":"invalid_request_error","message":"\"tiny-embed\" does not support chat"},"request_id":"req_ID"}` + "\n"},
	} {
		got := post(t, ctx, b.URL, "/v1/messages", []byte(c.body))
		body := reqID.ReplaceAllString(string(got.Body), `"req_ID"`)
		if got.Status != http.StatusBadRequest || got.CType != c.ctype || body != c.want {
			t.Errorf("%s: %d %q %q\nwant 400 %q %q", c.body, got.Status, got.CType, body, c.ctype, c.want)
		}
		if c.ctype == gin && (got.Header.Get("Cache-Control") != "" || got.Header.Get("Connection") == "keep-alive") {
			t.Errorf("%s: a refusal before the stream began has the stream's headers: %v", c.body, got.Header)
		}
	}
}
