package gateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// volatileKeys are timestamps and durations that differ between two calls to Ollama.
var volatileKeys = map[string]bool{
	"modified_at": true, "expires_at": true, "created": true, "created_at": true,
	"total_duration": true, "load_duration": true, "prompt_eval_duration": true, "eval_duration": true,
}

// stripVolatile removes volatileKeys at any depth and undoes Ollama's own
// nondeterminism: /api/tags and /v1/models list models modified in the same second in
// map order, and /api/show's parameters and modelfile PARAMETER lines come in map order.
func stripVolatile(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if volatileKeys[k] {
				delete(x, k)
				continue
			}
			x[k] = stripVolatile(e)
		}
		for _, list := range []string{"models", "data"} { // /api/tags, /v1/models
			if models, ok := x[list].([]any); ok {
				slices.SortFunc(models, func(a, b any) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
			}
		}
		for _, k := range []string{"modelfile", "parameters"} { // /api/show
			if text, ok := x[k].(string); ok {
				lines := strings.Split(text, "\n")
				slices.Sort(lines)
				x[k] = strings.Join(lines, "\n")
			}
		}
	case []any:
		for i := range x {
			x[i] = stripVolatile(x[i])
		}
	}
	return v
}

// TestE2EPassThroughMatchesOllama compares foreman's answers with Ollama's own, parsed
// and without timestamps and durations, for every pass-through route a client reads.
func TestE2EPassThroughMatchesOllama(t *testing.T) {
	url := ollamatest.RealOllama(t)
	b := newTestBundle(t, withTargetURL(url))
	directTo := func(method, path string, body []byte) (*http.Response, []byte) {
		t.Helper()
		d := &testBundle{URL: url}
		return d.request(t, method, path, body)
	}
	cases := []struct{ method, path, body string }{
		{"GET", "/api/version", ""},
		{"GET", "/api/tags", ""},
		{"POST", "/api/show", `{"model":"tiny-a"}`},
		{"POST", "/api/show", `{"model":"tiny-embed:latest"}`},
		{"POST", "/api/embed", `{"model":"tiny-embed","input":["hello","world"]}`},
		{"POST", "/api/embeddings", `{"model":"tiny-embed","prompt":"hello"}`},
		{"POST", "/v1/embeddings", `{"model":"tiny-embed","input":"hello"}`},
		{"GET", "/v1/models", ""},
		{"GET", "/v1/models/tiny-a:latest", ""},
		{"GET", "/api/ps", ""},                                      // after the embeds: tiny-embed is loaded
		{"POST", "/api/embed", `{"model":"tiny-embed","input":42}`}, // Ollama's 400
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.path+" "+c.body, func(t *testing.T) {
			var body []byte
			if c.body != "" {
				body = []byte(c.body)
			}
			want, wantBody := directTo(c.method, c.path, body)
			got, gotBody := b.request(t, c.method, c.path, body)
			if got.StatusCode != want.StatusCode {
				t.Fatalf("status %d (%s), Ollama says %d (%s)", got.StatusCode, gotBody, want.StatusCode, wantBody)
			}
			if g, w := got.Header.Get("Content-Type"), want.Header.Get("Content-Type"); g != w {
				t.Errorf("Content-Type %q, Ollama says %q", g, w)
			}
			var g, w any
			if err := json.Unmarshal(gotBody, &g); err != nil {
				t.Fatalf("foreman's body %q: %v", gotBody, err)
			}
			if err := json.Unmarshal(wantBody, &w); err != nil {
				t.Fatalf("Ollama's body %q: %v", wantBody, err)
			}
			if !reflect.DeepEqual(stripVolatile(g), stripVolatile(w)) {
				t.Errorf("foreman\n %s\nOllama\n %s", gotBody, wantBody)
			}
		})
	}

	t.Run("unknown model", func(t *testing.T) {
		// Same status and the same body: clients match on Ollama's wording.
		for _, c := range []struct{ method, path, body string }{
			{"POST", "/api/show", `{"model":"ghost"}`},
			{"POST", "/api/embed", `{"model":"ghost","input":"x"}`},
			{"POST", "/api/embeddings", `{"model":"ghost","prompt":"x"}`},
			{"POST", "/v1/embeddings", `{"model":"ghost","input":"x"}`},
			{"GET", "/v1/models/ghost", ""},
			// queued routes answer before queuing anything
			{"POST", "/api/chat", `{"model":"ghost","messages":[{"role":"user","content":"x"}]}`},
			{"POST", "/api/generate", `{"model":"ghost","prompt":"x"}`},
			{"POST", "/v1/chat/completions", `{"model":"ghost","messages":[{"role":"user","content":"x"}]}`},
			{"POST", "/v1/completions", `{"model":"ghost","prompt":"x"}`},
		} {
			var body []byte
			if c.body != "" {
				body = []byte(c.body)
			}
			want, wantBody := directTo(c.method, c.path, body)
			got, gotBody := b.request(t, c.method, c.path, body)
			if got.StatusCode != http.StatusNotFound || want.StatusCode != http.StatusNotFound ||
				strings.TrimSpace(string(gotBody)) != strings.TrimSpace(string(wantBody)) {
				t.Errorf("%s %s: foreman %d %s, Ollama %d %s", c.method, c.path, got.StatusCode, gotBody, want.StatusCode, wantBody)
			}
		}
	})

	t.Run("refusals", func(t *testing.T) {
		// Odd and hostile bodies that Ollama refuses before it runs anything: foreman
		// refuses them with the same status, media type and body (an Anthropic error's
		// request_id aside), in Ollama's order of checks. (No worker runs here: nothing
		// below may be queued.)
		reqID := regexp.MustCompile(`"req_[0-9a-f]{24}"`)
		for _, c := range []struct{ path, body string }{
			{"/api/generate", `{}`},
			{"/api/generate", `{"model":""}`},
			{"/api/generate", `{"model":"  ","prompt":"x"}`},
			{"/api/generate", `{"model":"bad name!","prompt":"x"}`},
			{"/api/generate", `null x`},
			{"/api/generate", `{"model":"ghost","top_logprobs":21}`},
			{"/api/generate", `{"model":"tiny-a","prompt":"x","top_logprobs":-1}`},
			{"/api/generate", `{"model":"ghost","top_logprobs":21,"top_logprobs":null}`},
			{"/api/chat", `{}`},
			{"/api/chat", `null x`},
			{"/api/chat", `{"model":"bad name!","messages":[]}`},
			{"/api/chat", `{"model":"ghost","top_logprobs":-1,"messages":[]}`},
			{"/v1/chat/completions", `{"model":"tiny-a","messages":[]}`},
			{"/v1/chat/completions", `{"model":"tiny-a"}`},
			{"/v1/chat/completions", `{"messages":[]}`},
			{"/v1/chat/completions", `null`},
			{"/v1/chat/completions", `{"model":"","messages":[{"role":"user","content":"x"}]}`},
			{"/v1/chat/completions", `{"model":"bad name!","messages":[{"role":"user","content":"x"}]}`},
			{"/v1/chat/completions", `{"model":"ghost","messages":[{"role":"user","content":"x"}],"top_logprobs":50}`},
			{"/v1/completions", `{}`},
			{"/v1/completions", `{"model":"bad name!","prompt":"x"}`},
			{"/v1/completions", `{"model":"ghost","prompt":"x","logprobs":50}`},
			{"/v1/embeddings", `{"encoding_format":"bad","input":"x"}`},
			{"/v1/embeddings", `{"encoding_format":"bad"}`},
			{"/v1/embeddings", `{"encoding_format":"bad","model":"ghost","input":"x"}`},
			{"/v1/embeddings", `{"encoding_format":"bad","model":"tiny-embed","input":"x"}`},
			{"/v1/embeddings", `{"model":"tiny-embed"}`},
			{"/v1/embeddings", `{"model":"tiny-embed","input":[]}`},
			{"/v1/embeddings", `{"model":"tiny-embed","input":5}`},
			{"/v1/embeddings", `null`},
			{"/v1/responses", `{"model":"ghost","input":"x"}`},
			{"/v1/responses", `null x`},
			{"/v1/messages", `{}`},
			{"/v1/messages", `null`},
			{"/v1/messages", `{"model":"tiny-a","max_tokens":0,"messages":[{"role":"user","content":"hi"}]}`},
			{"/v1/messages", `{"model":"tiny-a","max_tokens":4,"messages":[]}`},
			{"/v1/images/generations", `null x`},
			{"/v1/images/generations", `{"prompt":"x"}`},
		} {
			want, wantBody := directTo("POST", c.path, []byte(c.body))
			got, gotBody := b.request(t, "POST", c.path, []byte(c.body))
			g, w := reqID.ReplaceAllString(string(gotBody), "req_ID"), reqID.ReplaceAllString(string(wantBody), "req_ID")
			if want.StatusCode < 400 || got.StatusCode != want.StatusCode || g != w ||
				got.Header.Get("Content-Type") != want.Header.Get("Content-Type") {
				t.Errorf("POST %s %s: foreman %d %q %q, Ollama %d %q %q", c.path, c.body,
					got.StatusCode, got.Header.Get("Content-Type"), g, want.StatusCode, want.Header.Get("Content-Type"), w)
			}
		}
	})

	t.Run("root", func(t *testing.T) {
		_, want := directTo("GET", "/", nil)
		_, got := b.request(t, "GET", "/", nil)
		if string(got) != string(want) {
			t.Errorf("GET /: %q, Ollama says %q", got, want)
		}
	})
}
