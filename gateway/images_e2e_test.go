package gateway

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The real Ollama (its tiny models make no images) and foreman refuse OpenAI's image
// routes alike, in the order Ollama's middlewares check them; for a text model, which
// Ollama answers with an empty 200, foreman's refusal says why (ADR-0067).
func TestE2EImageRoutesMatchDirect(t *testing.T) {
	b := newE2EBundle(t, nil)
	ctx := testCtx(t, 2*time.Minute)
	b.warm(t, ctx, "tiny-a")
	for _, c := range []struct{ path, body, msg string }{
		{"/v1/images/generations", `{}`, "prompt is required"},
		{"/v1/images/generations", `{"model":"tiny-a"}`, "prompt is required"},
		{"/v1/images/generations", `{"model":"nope"}`, "prompt is required"},
		{"/v1/images/generations", `{"prompt":"x"}`, "model is required"},
		{"/v1/images/edits", `{"model":"tiny-a","prompt":"x"}`, "image is required"},
		{"/v1/images/edits", `{"model":"nope","prompt":"x"}`, "image is required"},
		{"/v1/images/edits", `{"model":"nope","prompt":"x","image":"not a data URL"}`, "invalid image: invalid image input"},
		{"/v1/images/edits", `{"model":"tiny-a","prompt":"x","image":"http://example.com/a.png"}`,
			"invalid image: image URLs are not currently supported, please use base64 encoded data instead"},
		{"/v1/images/generations", `{"model":"nope","prompt":"x"}`, "model 'nope' not found"},
		{"/v1/images/edits", `{"model":"tiny-a:","prompt":"x","image":"data:;base64,"}`, "model 'tiny-a:' not found"},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		want := post(t, ctx, b.Target, c.path, []byte(c.body))
		if got.Status != want.Status || !bytes.Equal(bytes.TrimSpace(got.Body), bytes.TrimSpace(want.Body)) || errorBody(t, got.Body) != c.msg {
			t.Errorf("%s %s: foreman %d %s, Ollama %d %s", c.path, c.body, got.Status, got.Body, want.Status, want.Body)
		}
		if got.Header.Get(HeaderJobID) != "" {
			t.Errorf("%s %s: a job was made", c.path, c.body)
		}
	}

	body := []byte(`{"model":"tiny-a","prompt":"a lighthouse","size":"64x64"}`)
	direct := post(t, ctx, b.Target, "/v1/images/generations", body)
	if direct.Status != http.StatusOK || len(direct.Body) != 0 {
		t.Fatalf("Ollama answers a text model's picture with %d %q: no longer the empty 200 foreman refuses ahead of", direct.Status, direct.Body)
	}
	got := post(t, ctx, b.URL, "/v1/images/generations", body)
	if got.Status != http.StatusBadRequest || !strings.HasPrefix(errorBody(t, got.Body), `model "tiny-a" makes no images`) || got.Header.Get(HeaderJobID) != "" {
		t.Errorf("a text model's picture through foreman: %d %s (job %q)", got.Status, got.Body, got.Header.Get(HeaderJobID))
	}
}
