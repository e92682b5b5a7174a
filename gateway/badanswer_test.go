package gateway

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A sync caller whose target answers 200 with what Ollama never sends (a proxy on the
// wrong port, garbage) gets an error status naming the bad answer, not a 200 with it.
func TestQueuedBadAnswerIsAnError(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	cases := []struct {
		path, stream string
		answer       ollamatest.Failure
		want         string
	}{
		{"/v1/chat/completions", "", ollamatest.BadAnswer("text/plain; charset=utf-8", "Ollama is running"), `not JSON: "Ollama is running"`},
		{"/api/chat", "", ollamatest.BadAnswer(ollama.ContentTypeNDJSON, "garbage\nmore garbage\n"), `no JSON frame: "garbage\nmore garbage\n"`},
		{"/api/generate", "false", ollamatest.BadAnswer("text/html", "<html>bad gateway</html>"), "not JSON"},
	}
	for _, c := range cases {
		b.Fake.FailNext(1, c.answer)
		got := post(t, ctx, b.URL, c.path, routeBody(c.path, "tiny-a", "hi", c.stream))
		if got.Status != http.StatusBadGateway {
			t.Errorf("%s: %d %q, want 502", c.path, got.Status, got.Body)
			continue
		}
		if msg := errorBody(t, got.Body); !strings.Contains(msg, "bad answer from the target") || !strings.Contains(msg, c.want) {
			t.Errorf("%s: error %q, want it to name the answer (%s)", c.path, msg, c.want)
		}
	}
}

// A target that answers "not now" to every attempt of a sync call: the call gets that
// status when the attempts are spent (503 with Retry-After), not a 502.
func TestQueuedBusyTargetKeepsItsStatus(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	b.Fake.FailNext(10, ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded"))
	got := post(t, ctx, b.URL, "/api/chat", []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":false}`))
	if got.Status != http.StatusServiceUnavailable || got.Header.Get("Retry-After") == "" || !strings.Contains(string(got.Body), "server busy") {
		t.Fatalf("sync call to a target busy at every attempt: %d (Retry-After %q) %s; want 503 with Retry-After",
			got.Status, got.Header.Get("Retry-After"), got.Body)
	}
}
