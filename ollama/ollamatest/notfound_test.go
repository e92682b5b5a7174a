package ollamatest_test

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// notFoundCalls name a model no Ollama has on each route that looks one up.
var notFoundCalls = []struct{ method, path, body string }{
	{"POST", "/api/chat", `{"model":"nope","messages":[{"role":"user","content":"x"}]}`},
	{"POST", "/api/chat", `{"model":"nope","messages":[{"role":"user","content":"x"}],"stream":false}`},
	{"POST", "/api/generate", `{"model":"nope","prompt":"x"}`},
	{"POST", "/api/show", `{"model":"nope"}`},
	{"POST", "/api/show", `{"name":"nope"}`},
	{"POST", "/api/embed", `{"model":"nope","input":"x"}`},
	{"POST", "/api/embeddings", `{"model":"nope","prompt":"x"}`},
	{"DELETE", "/api/delete", `{"model":"nope"}`},
	{"POST", "/api/copy", `{"source":"nope","destination":"nope2"}`},
	{"POST", "/v1/chat/completions", `{"model":"nope","messages":[{"role":"user","content":"x"}]}`},
	{"POST", "/v1/chat/completions", `{"model":"nope","messages":[{"role":"user","content":"x"}],"stream":true}`},
	{"POST", "/v1/completions", `{"model":"nope","prompt":"x"}`},
	{"POST", "/v1/embeddings", `{"model":"nope","input":"x"}`},
	{"POST", "/v1/responses", `{"model":"nope","input":"x"}`},
	{"POST", "/v1/messages", `{"model":"nope","max_tokens":4,"messages":[{"role":"user","content":"x"}]}`},
	{"POST", "/v1/images/generations", `{"model":"nope","prompt":"x"}`},
	{"GET", "/v1/models/nope", ``},
}

// send makes one of notFoundCalls to base: its status, Content-Type and body, with the
// Anthropic request_id (random) made constant.
func send(t *testing.T, ctx context.Context, base, method, path, body string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	out = regexp.MustCompile(`"req_[0-9a-f]{24}"`).ReplaceAll(out, []byte(`"req_ID"`))
	return resp.Status + " " + resp.Header.Get("Content-Type") + " " + string(out)
}

// The fake answers a model it lacks in Ollama 0.17.4's words on each route (measured):
// "model 'x' not found" on chat, generate, show, delete and the OpenAI and Anthropic
// routes on top of them, `model "x" not found, try pulling it first` on the embedding
// routes, `model "x" not found` on copy. It said the embedding routes' words on every
// route.
func TestNotFoundInOllamasWords(t *testing.T) {
	t.Parallel()
	s := ollamatest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const (
		gin = "404 Not Found application/json; charset=utf-8 "
		enc = "404 Not Found application/json "
	)
	oai := func(msg string) string {
		return enc + `{"error":{"message":"` + msg + `","type":"api_error","param":null,"code":null}}` + "\n"
	}
	want := []string{
		gin + `{"error":"model 'nope' not found"}`,
		gin + `{"error":"model 'nope' not found"}`,
		gin + `{"error":"model 'nope' not found"}`,
		gin + `{"error":"model 'nope' not found"}`,
		gin + `{"error":"model 'nope' not found"}`,
		gin + `{"error":"model \"nope\" not found, try pulling it first"}`,
		gin + `{"error":"model \"nope\" not found, try pulling it first"}`,
		gin + `{"error":"model 'nope' not found"}`,
		gin + `{"error":"model \"nope\" not found"}`,
		oai("model 'nope' not found"),
		oai("model 'nope' not found"),
		oai("model 'nope' not found"),
		oai(`model \"nope\" not found, try pulling it first`),
		oai("model 'nope' not found"),
		enc + `{"type":"error","error":{"type":"not_found_error","message":"model 'nope' not found"},"request_id":"req_ID"}` + "\n",
		oai("model 'nope' not found"),
		oai("model 'nope' not found"),
	}
	for i, c := range notFoundCalls {
		if got := send(t, ctx, s.URL, c.method, c.path, c.body); got != want[i] {
			t.Errorf("%s %s %s:\ngot  %s\nwant %s", c.method, c.path, c.body, got, want[i])
		}
	}
}

// The same calls, to the fake and to a real Ollama: the same status, Content-Type and
// bytes.
func TestNotFoundMatchesRealOllama(t *testing.T) {
	real := ollamatest.RealOllama(t)
	s := ollamatest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range notFoundCalls {
		got, want := send(t, ctx, s.URL, c.method, c.path, c.body), send(t, ctx, real, c.method, c.path, c.body)
		if got != want {
			t.Errorf("%s %s %s:\nfake %s\nreal %s", c.method, c.path, c.body, got, want)
		}
	}
}
