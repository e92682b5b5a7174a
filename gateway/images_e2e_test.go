package gateway

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// The real Ollama (its tiny models make no images) and foreman answer OpenAI's image
// routes alike: the same refusals, and for a text model foreman's 400 where Ollama
// sends an empty 200 (ADR-0067). The fake's image routes are checked against these
// answers here, so the fast tests' image model stands on what Ollama does.
func TestE2EImageRoutesMatchDirect(t *testing.T) {
	b := newE2EBundle(t, nil)
	ctx := testCtx(t, 2*time.Minute)
	b.warm(t, ctx, "tiny-a")
	for _, c := range []struct{ path, body, msg string }{
		{"/v1/images/generations", `{"model":"tiny-a"}`, "prompt is required"},
		{"/v1/images/edits", `{"model":"tiny-a","prompt":"x"}`, "image is required"},
		{"/v1/images/edits", `{"model":"tiny-a","prompt":"x","image":"not a data URL"}`, "invalid image: invalid image input"},
		{"/v1/images/generations", `{"model":"nope","prompt":"x"}`, "model 'nope' not found"},
		{"/v1/images/edits", `{"model":"tiny-a:","prompt":"x","image":"data:;base64,"}`, "model 'tiny-a:' not found"},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		want := post(t, ctx, b.Target, c.path, []byte(c.body))
		if got.Status != want.Status || !bytes.Equal(bytes.TrimSpace(got.Body), bytes.TrimSpace(want.Body)) || errorBody(t, got.Body) != c.msg {
			t.Errorf("%s %s: foreman %d %s, Ollama %d %s", c.path, c.body, got.Status, got.Body, want.Status, want.Body)
		}
	}

	body := []byte(`{"model":"tiny-a","prompt":"a lighthouse","size":"64x64"}`)
	direct := post(t, ctx, b.Target, "/v1/images/generations", body)
	if direct.Status != http.StatusOK || len(direct.Body) != 0 {
		t.Fatalf("Ollama answers a text model's picture with %d %q: no longer the empty 200 foreman turns into a 400", direct.Status, direct.Body)
	}
	got := post(t, ctx, b.URL, "/v1/images/generations", body)
	if got.Status != http.StatusBadRequest || errorBody(t, got.Body) != `model "tiny-a" made no image: it is not an image generation model` {
		t.Errorf("a text model's picture through foreman: %d %s", got.Status, got.Body)
	}
	j := waitRecord(t, ctx, b.Store, got.Header.Get(HeaderJobID), func(j *broker.Job) bool { return j.State.Terminal() })
	if j.State != broker.StateFailed || j.Kind != broker.KindOpenAIImages {
		t.Errorf("its job: %+v", j)
	}
}
