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
