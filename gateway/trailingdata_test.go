package gateway

import (
	"bytes"
	"encoding/json"
	"net/http"
	"reflect"
	"testing"
	"time"
)

// Ollama's router reads a request body with a json.Decoder (gin's ShouldBindJSON): it
// decodes the first JSON value and never looks past it, so a body with more after its
// object (a second object, a stray bracket, a NUL) is answered as the object alone. foreman
// answered it 400 "invalid character ... after top-level value" on every Ollama route. The
// object is what is queued and sent on, so the target (and a worker that reads the body)
// sees one JSON object.
func TestTrailingDataAfterTheObjectIsIgnoredAsOllamaDoes(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	for _, c := range []struct{ path, object, rest string }{
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","stream":false}`, ` garbage`},
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":false}`, `]`},
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`, "\n{\"model\":\"nope\"}\n"},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`, "\x00"},
		{"/api/embed", `{"model":"tiny-embed","input":"hi"}`, ` x`},
		{"/v1/embeddings", `{"model":"tiny-embed","input":"hi"}`, `}`},
		{"/api/show", `{"model":"tiny-a"}`, ` x`},
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","stream":false}`, "\u00a0"}, // no JSON white space
		{"/api/copy", `{"source":"tiny-a","destination":"tiny-c"}`, ` x`},
	} {
		body := []byte(c.object + c.rest)
		got := post(t, ctx, b.URL, c.path, body)
		if got.Status != http.StatusOK || bytes.Contains(got.Body, []byte(`"error"`)) {
			t.Errorf("%s %q: %d %s, want 200 with the object's answer, as Ollama answers it", c.path, body, got.Status, got.Body)
			continue
		}
		var sent []byte
		for _, call := range b.Fake.Calls() {
			if call.Path == c.path {
				sent = call.Body
			}
		}
		if !sameRequest(sent, []byte(c.object)) {
			t.Errorf("%s %q: the target got %q, want the object alone", c.path, body, sent)
		}
	}
	// What is no JSON object followed by more is refused as before.
	for _, body := range []string{`[1] x`, `{"model":"tiny-a" x`, `x {"model":"tiny-a"}`} {
		if got := post(t, ctx, b.URL, "/api/chat", []byte(body)); got.Status != http.StatusBadRequest {
			t.Errorf("/api/chat %q: %d %s, want 400", body, got.Status, got.Body)
		}
	}
}

// sameRequest reports whether the target's body sent is the request object, but for the
// stream members the worker sets to call a non-streamed request streamed (ADR-0050).
func sameRequest(sent, object []byte) bool {
	var a, b map[string]any
	if json.Unmarshal(sent, &a) != nil || json.Unmarshal(object, &b) != nil {
		return false
	}
	for _, m := range []map[string]any{a, b} {
		delete(m, "stream")
		delete(m, "stream_options")
	}
	return reflect.DeepEqual(a, b)
}

// POST /jobs is foreman's own route, whose body is its job: anything after the object is
// refused, not dropped as Ollama's routes drop it.
func TestJobsRefusesDataAfterTheObject(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	object := `{"kind":"chat","model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`
	for _, rest := range []string{` x`, `]`, "\n{\"model\":\"nope\"}", "\u00a0", "\x00"} {
		got := post(t, ctx, b.URL, "/jobs", []byte(object+rest))
		var e struct{ Error string }
		if got.Status != http.StatusBadRequest || json.Unmarshal(got.Body, &e) != nil || e.Error != "invalid JSON body: data after the object" {
			t.Errorf("POST /jobs %q: %d %s, want 400 invalid JSON body: data after the object", object+rest, got.Status, got.Body)
		}
	}
	if got := post(t, ctx, b.URL, "/jobs", []byte(object+" \r\n\t")); got.Status != http.StatusAccepted {
		t.Errorf("POST /jobs with JSON white space after the object: %d %s, want 202", got.Status, got.Body)
	}
}
