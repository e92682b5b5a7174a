package gateway

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// An option of a type Ollama refuses (`"num_ctx":"big"`) is a 400 with Ollama's own
// words, before anything is queued or relayed. Ollama answers it 500 once the request is
// taken: foreman queued a job that could only fail (a /jobs submit got 202, then a failed
// job), answered a chat 500, and logged the caller's slip as a server error.
func TestOptionsOfAWrongTypeAreRefused(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	for _, c := range []struct{ path, body, want string }{
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"options":{"num_ctx":"big"}}`,
			`{"error":"option \"num_ctx\" must be of type integer"}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","options":{"temperature":"warm","top_k":5}}`,
			`{"error":"option \"temperature\" must be of type float32"}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","options":{"stop":"\n"}}`,
			`{"error":"option \"stop\" must be of type array"}`},
		{"/api/chat", `{"model":"tiny-a","messages":[],"options":{"stop":["\n",7]}}`,
			`{"error":"option \"stop\" must be of an array of strings"}`},
		{"/api/embed", `{"model":"tiny-embed","input":"hi","options":{"use_mmap":"yes"}}`, // relayed
			`{"error":"option \"use_mmap\" must be of type boolean"}`},
		{"/api/embed", `{"model":"tiny-a","input":"hi","options":{"num_thread":"4"}}`, // queued (ADR-0053)
			`{"error":"option \"num_thread\" must be of type integer"}`},
		{"/api/embeddings", `{"model":"tiny-embed","prompt":"hi","options":{"seed":true}}`,
			`{"error":"option \"seed\" must be of type integer"}`},
		{"/jobs", `{"kind":"chat","model":"tiny-a","messages":[],"options":{"num_predict":"8"}}`,
			`{"error":"option \"num_predict\" must be of type integer"}`},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		if got.Status != http.StatusBadRequest || strings.TrimSpace(string(got.Body)) != c.want {
			t.Errorf("%s %s: %d %s, want 400 %s", c.path, c.body, got.Status, got.Body, c.want)
		}
	}
	// A model Ollama lacks is its 404 first, as Ollama looks the model up before it reads
	// the options.
	for _, c := range []struct{ path, body string }{
		{"/api/chat", `{"model":"nope","messages":[{"role":"user","content":"hi"}],"options":{"num_ctx":"big"}}`},
		{"/jobs", `{"kind":"generate","model":"nope","prompt":"hi","options":{"num_ctx":"big"}}`},
		// The embedding routes too: Ollama's embed handlers look the model up
		// (scheduleRunner) before they read the options.
		{"/api/embed", `{"model":"nope","input":"hi","options":{"use_mmap":"yes"}}`},
		{"/api/embeddings", `{"model":"nope","prompt":"hi","options":{"seed":true}}`},
		{"/jobs", `{"kind":"embed","model":"nope","input":"hi","options":{"num_ctx":"big"}}`},
		{"/jobs", `{"kind":"embeddings","model":"nope","prompt":"hi","options":{"num_ctx":"big"}}`},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		if got.Status != http.StatusNotFound || !strings.Contains(string(got.Body), `not found`) {
			t.Errorf("%s %s: %d %s, want Ollama's 404", c.path, c.body, got.Status, got.Body)
		}
	}
	for _, c := range b.Fake.Calls() {
		if c.Method == http.MethodPost {
			t.Errorf("a refused request reached the target: %+v", c)
		}
	}
	if jobs, _, err := b.Broker.Store.List(ctx, broker.ListOptions{}); err != nil || len(jobs) != 0 {
		t.Errorf("jobs after the refusals: %d, %v; want none", len(jobs), err)
	}

	// Options of the types Ollama reads, nulls and those it does not know, pass; so do
	// any on the OpenAI routes, whose requests have no options.
	for _, c := range []struct{ path, body string }{
		{"/api/chat", `{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"hi"}],` +
			`"options":{"num_ctx":256,"temperature":0.5,"use_mmap":true,"stop":["\n"],"seed":null,"mirostat":"x"}}`},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"options":{"num_ctx":"big"}}`},
	} {
		if got := post(t, ctx, b.URL, c.path, []byte(c.body)); got.Status != http.StatusOK {
			t.Errorf("%s %s: %d %s, want 200", c.path, c.body, got.Status, got.Body)
		}
	}
}
