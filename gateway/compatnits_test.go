package gateway

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// An Anthropic error's request_id has the shape Ollama's anthropic.NewError gives it,
// "req_" and 24 lower-case hex digits, on a refusal and in a stream's error event alike:
// a client or log parser that reads Ollama's ids reads foreman's.
func TestAnthropicRequestIDAsOllama(t *testing.T) {
	t.Parallel()
	shape := regexp.MustCompile(`^req_[0-9a-f]{24}$`)
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	got := post(t, ctx, b.URL, "/v1/messages", []byte(`{"model":"nope","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`))
	var e struct {
		RequestID string `json:"request_id"`
	}
	if got.Status != http.StatusNotFound || json.Unmarshal(got.Body, &e) != nil || !shape.MatchString(e.RequestID) {
		t.Errorf("refusal: %d %s, want a 404 whose request_id is req_ and 24 lower-case hex digits", got.Status, got.Body)
	}
	ev := string(sseErrorEvent(broker.KindAnthropicMessages, "boom", 0))
	data, ok := strings.CutPrefix(strings.TrimSpace(ev), "event: error\ndata: ")
	if !ok || json.Unmarshal([]byte(data), &e) != nil || !shape.MatchString(e.RequestID) {
		t.Errorf("error event %q: want a request_id of req_ and 24 lower-case hex digits", ev)
	}
	if a, b := anthropicRequestID(), anthropicRequestID(); a == b {
		t.Errorf("two request ids alike: %s", a)
	}
}

// A streamed call on the Responses and Messages routes is answered with the headers
// Ollama's middleware for them sets before its chat handler runs, Connection:
// keep-alive among them: on its events, and on the error of a call that failed before
// them (a model that cannot chat).
func TestStreamedResponsesAndMessagesHeadersAsOllama(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	for _, c := range []struct {
		path, body string
		status     int
	}{
		{"/v1/responses", `{"model":"tiny-a","input":"tell me","max_output_tokens":6,"stream":true}`, 200},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":6,"messages":[{"role":"user","content":"tell me"}],"stream":true}`, 200},
		{"/v1/responses", `{"model":"tiny-embed","input":"tell me","stream":true}`, 400},
		{"/v1/messages", `{"model":"tiny-embed","max_tokens":6,"messages":[{"role":"user","content":"tell me"}],"stream":true}`, 400},
	} {
		got, want := post(t, ctx, b.URL, c.path, []byte(c.body)), post(t, ctx, b.Fake.URL, c.path, []byte(c.body))
		if want.Status != c.status || want.Header.Get("Connection") != "keep-alive" || want.Header.Get("Cache-Control") != "no-cache" {
			t.Fatalf("%s %s: the fake answered %d %v, want %d with Ollama's stream headers", c.path, c.body, want.Status, want.Header, c.status)
		}
		for _, h := range []string{"Content-Type", "Cache-Control", "Connection"} {
			if got.Status != want.Status || got.Header.Get(h) != want.Header.Get(h) {
				t.Errorf("%s %s: %d %s %q, the target's %d %q", c.path, c.body, got.Status, h, got.Header.Get(h), want.Status, want.Header.Get(h))
			}
		}
	}
}
