package gateway

import (
	"net/http"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A streamed sync caller whose target sends an error line in the middle of its stream,
// more lines after it, gets the stream up to that line and no further: where Ollama's
// client stops (ADR-0135), and no error of foreman's own after it (it has the target's).
// Before, it got the lines after the error too, ending done:true, as if answered.
func TestQueuedStreamEndsAtAnErrorLineMidStream(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	first := `{"model":"tiny-a","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"a"},"done":false}` + "\n"
	last := `{"model":"tiny-a","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":""},"done":true}` + "\n"
	b.Fake.FailNext(1, ollamatest.BadAnswer(ollama.ContentTypeNDJSON, first+`{"error":"boom"}`+"\n"+last))
	got := post(t, ctx, b.URL, "/api/chat", routeBody("/api/chat", "tiny-a", "hi", "true"))
	if want := first + `{"error":"boom"}` + "\n"; got.Status != http.StatusOK || string(got.Body) != want {
		t.Fatalf("%d %q, want 200 %q", got.Status, got.Body, want)
	}
}
