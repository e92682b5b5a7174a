package gateway

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// fuzzModelRoutes are the POST routes FuzzHTTPSubmit leaves out: the embedding routes and
// /api/show (relayed, or queued for an embedding on a chat model), and the queued routes
// of the OpenAI Responses, Anthropic Messages and OpenAI image APIs.
var fuzzModelRoutes = []string{
	"/api/embed", "/api/embeddings", "/v1/embeddings", "/api/show",
	"/v1/responses", "/v1/messages", "/v1/images/generations", "/v1/images/edits",
}

// FuzzHTTPModelRoutes posts fuzzed bodies to fuzzModelRoutes on a whole gateway (the
// shared fuzz bundle). Whatever the body, the answer comes; it is no 5xx but 503 (queue
// or storage full); a non-2xx is JSON with an "error" member in the route's API shape;
// and a call that reached the target (relayed, or run as a job) answers the status the
// target gives the same body.
// Run with: go test -run '^$' -fuzz '^FuzzHTTPModelRoutes$' -fuzztime 30s ./gateway
func FuzzHTTPModelRoutes(f *testing.F) {
	f.Add(uint8(0), []byte(`{"model":"tiny-embed","input":"hi"}`))
	f.Add(uint8(0), []byte(`{"model":"tiny-a","input":["a","b"]}`))
	f.Add(uint8(1), []byte(`{"model":"tiny-embed","prompt":"hi"}`))
	f.Add(uint8(1), []byte(`{"model":"tiny-a:","prompt":"hi"}`))
	f.Add(uint8(2), []byte(`{"model":"tiny-embed","input":"hi","encoding_format":"base64"}`))
	f.Add(uint8(2), []byte(`{"model":"tiny-a","input":[1,2]}`))
	f.Add(uint8(3), []byte(`{"name":"tiny-a"}`))
	f.Add(uint8(3), []byte(`{"model":"nope","verbose":true}`))
	f.Add(uint8(4), []byte(`{"model":"tiny-a","input":"hi"}`))
	f.Add(uint8(4), []byte(`{"model":"tiny-a","input":"hi","stream":true,"text":{"format":{"type":"json_schema","schema":"yaml"}}}`))
	f.Add(uint8(5), []byte(`{"model":"tiny-a","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`))
	f.Add(uint8(5), []byte(`{"max_tokens":8,"messages":[]}`))
	f.Add(uint8(6), []byte(`{"model":"tiny-a","prompt":"a cat"}`))
	f.Add(uint8(7), []byte(`{"model":"tiny-a","prompt":"a cat","image":"data:image/png;base64,AAAA"}`))
	f.Add(uint8(0), []byte(`{"model":"tiny-embed","input":"x","options":{"num_ctx":"big"}}`))
	f.Add(uint8(1), []byte(`[]`))
	f.Add(uint8(6), []byte(`{"model":"tiny-img","prompt":"a cat","size":"16x16"}`))
	f.Add(uint8(7), []byte(`{"model":"tiny-img","prompt":"a cat","image":"data:image/png;base64,iVBORw0KGgo="}`))
	f.Add(uint8(5), []byte(`{"model":"tiny-think","max_tokens":8,"messages":[{"role":"user","content":"hi"}],"stream":true}`))
	models := append(ollamatest.DefaultModels(), ollamatest.Model{Name: "tiny-img:latest", Image: true}, ollamatest.Model{Name: "tiny-think:latest", Thinking: true})
	b, lookups := fuzzBundle(f, ollamatest.WithModels(models...))
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		path := fuzzModelRoutes[int(route)%len(fuzzModelRoutes)]
		ctx, cancel := context.WithTimeout(context.Background(), answerDeadline)
		defer cancel()
		before := len(b.Fake.Calls())
		req := httptest.NewRequestWithContext(ctx, http.MethodPost, path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		b.GW.ServeHTTP(w, req)
		if ctx.Err() != nil {
			t.Fatalf("POST %s %q: no answer within %s", path, body, answerDeadline)
		}
		status, out := w.Code, w.Body.Bytes()
		if status >= 500 && status != http.StatusServiceUnavailable {
			t.Fatalf("POST %s %q: %d %s", path, body, status, out)
		}
		if status/100 != 2 {
			wantErrorBody(t, path, status, out)
		}
		if reached := callsTo(b.testBundle, path, before); reached {
			direct := post(t, ctx, b.Fake.URL, path, body)
			if direct.Status != status {
				t.Fatalf("POST %s %q: %d %s, but the target answers %d %s", path, body, status, out, direct.Status, direct.Body)
			}
			if got, want := mediaType(w.Header().Get("Content-Type")), mediaType(direct.CType); status == http.StatusOK && got != want {
				t.Fatalf("POST %s %q: 200 %s, but the target answers 200 %s", path, body, got, want)
			}
		}
		wantNoWebhookTraffic(t, b, lookups, "")
	})
}

// callsTo reports whether the fake target got a call to path since it had before calls.
func callsTo(b *testBundle, path string, before int) bool {
	for _, c := range b.Fake.Calls()[before:] {
		if c.Path == path {
			return true
		}
	}
	return false
}
