package gateway

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A non-streamed OpenAI chat or completion is called streamed, with
// "stream_options":{"include_usage":true} in place of the caller's (ADR-0050). A caller's
// stream_options that Ollama's OpenAI layer cannot read is its 400, as it is on a streamed
// call: replacing it answered 200 to a request Ollama refuses.
func TestUnreadableStreamOptionsAreOllamasRefusal(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	for _, c := range []struct{ path, body string }{
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream_options":"x"}`},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":false,"stream_options":{"include_usage":"yes"}}`},
		{"/v1/completions", `{"model":"tiny-a","prompt":"hi","stream_options":[true]}`},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		var e struct {
			Error struct{ Message, Type string } `json:"error"`
		}
		if got.Status != http.StatusBadRequest || json.Unmarshal(got.Body, &e) != nil || e.Error.Type != "invalid_request_error" ||
			!strings.HasPrefix(e.Error.Message, "json: cannot unmarshal") {
			t.Errorf("%s %s: %d %s, want Ollama's 400 invalid_request_error (json: cannot unmarshal ...)", c.path, c.body, got.Status, got.Body)
		}
	}
	// One it can read is still answered whole, with the usage.
	got := post(t, ctx, b.URL, "/v1/chat/completions",
		[]byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":false}}`))
	if got.Status != http.StatusOK || !strings.Contains(string(got.Body), `"usage":{`) {
		t.Errorf("readable stream_options: %d %s, want 200 with the usage", got.Status, got.Body)
	}
}
