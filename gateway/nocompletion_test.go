package gateway

import (
	"bytes"
	"context"
	"net/http"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// noCompletionCalls are a call on every chat and generate route for the fake's
// embedding-only model, which Ollama refuses in its handler without loading anything.
var noCompletionCalls = []struct{ path, body string }{
	{"/api/chat", `{"model":"tiny-embed","messages":[{"role":"user","content":"hi"}]}`},
	{"/api/chat", `{"model":"tiny-embed","messages":[{"role":"user","content":"hi"}],"stream":false}`},
	{"/api/generate", `{"model":"tiny-embed","prompt":"hi"}`},
	{"/api/generate", `{"model":"tiny-embed:latest","prompt":"hi","stream":false}`},
	{"/v1/chat/completions", `{"model":"tiny-embed","messages":[{"role":"user","content":"hi"}]}`},
	{"/v1/chat/completions", `{"model":"tiny-embed","messages":[{"role":"user","content":"hi"}],"stream":true}`},
	{"/v1/completions", `{"model":"tiny-embed","prompt":"hi"}`},
	{"/v1/responses", `{"model":"tiny-embed","input":"hi"}`},
	{"/v1/messages", `{"model":"tiny-embed","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`},
}

// A chat or generate call for a model that cannot complete (an embedding model) is
// refused by Ollama at once, in its handler, with no model loaded. foreman queued it: the
// call waited for its turn behind the running job (seconds to minutes on a busy Mac,
// 11 s measured against the real Ollama behind one long job) only to be refused then.
// It now goes straight to Ollama, whose answer it gets as Ollama gives it, no job made,
// while the worker is busy.
func TestCompletionOnEmbeddingModelIsNotQueued(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 60*time.Second)

	for _, c := range noCompletionCalls {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		want := post(t, ctx, b.Fake.URL, c.path, []byte(c.body))
		if got.Status != http.StatusBadRequest || got.Status != want.Status || got.CType != want.CType || !bytes.Equal(got.Body, want.Body) {
			t.Errorf("%s %s: got %d %q %s, want Ollama's %d %q %s", c.path, c.body, got.Status, got.CType, got.Body, want.Status, want.CType, want.Body)
		}
		if id := got.Header.Get(HeaderJobID); id != "" {
			t.Errorf("%s %s: queued as job %s", c.path, c.body, id)
		}
	}
	if jobs, _, err := b.Broker.Store.List(ctx, broker.ListOptions{}); err != nil || len(jobs) != 0 {
		t.Fatalf("jobs made for calls Ollama refuses in its handler: %d (%v)", len(jobs), err)
	}

	// Not behind the running job either.
	release := b.Fake.Hold("tiny-a")
	defer release()
	running := make(chan rawResponse, 1)
	go func() { running <- post(t, ctx, b.URL, "/api/chat", chatBody("tiny-a", "a long one", "false")) }()
	if err := b.Fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	for _, c := range noCompletionCalls {
		if got := post(t, ctx, b.URL, c.path, []byte(c.body)); got.Status != http.StatusBadRequest {
			t.Errorf("%s %s while a job runs: %d %s", c.path, c.body, got.Status, got.Body)
		}
	}
	release()
	if got := <-running; got.Status != http.StatusOK {
		t.Errorf("the running chat: %d %s", got.Status, got.Body)
	}
}

// POST /jobs refuses a chat or generate job for a model that cannot complete at submit,
// in the words its sync route's Ollama gives, as it refuses a model Ollama lacks: a batch
// is told at submit, not by a job that fails in its turn.
func TestCompletionJobOnEmbeddingModelRefusedAtSubmit(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	cases := []struct{ body, want string }{
		{`{"model":"tiny-embed","messages":[{"role":"user","content":"hi"}]}`, `{"error":"\"tiny-embed\" does not support chat"}`},
		{`{"kind":"generate","model":"tiny-embed","prompt":"hi"}`, `{"error":"\"tiny-embed\" does not support generate"}`},
		{`{"kind":"openai_chat","model":"tiny-embed","messages":[{"role":"user","content":"hi"}]}`, `{"error":"\"tiny-embed\" does not support chat"}`},
		{`{"kind":"openai_completion","model":"tiny-embed","prompt":"hi"}`, `{"error":"\"tiny-embed\" does not support generate"}`},
		{`{"kind":"openai_responses","model":"tiny-embed","input":"hi"}`, `{"error":"\"tiny-embed\" does not support chat"}`},
		{`{"kind":"anthropic_messages","model":"tiny-embed","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`, `{"error":"\"tiny-embed\" does not support chat"}`},
		// Raw mode alone passes the handler's raw-mode check; the capability's refusal follows.
		{`{"kind":"generate","model":"tiny-embed","prompt":"hi","raw":true}`, `{"error":"\"tiny-embed\" does not support generate"}`},
		{`{"kind":"generate","model":"tiny-embed","prompt":"hi","raw":true,"system":""}`, `{"error":"\"tiny-embed\" does not support generate"}`},
	}
	for _, c := range cases {
		got := post(t, ctx, b.URL, "/jobs", []byte(c.body))
		if got.Status != http.StatusBadRequest || string(bytes.TrimSpace(got.Body)) != c.want {
			t.Errorf("POST /jobs %s: %d %s, want 400 %s", c.body, got.Status, got.Body, c.want)
		}
	}
	if jobs, _, err := b.Broker.Store.List(context.WithoutCancel(ctx), broker.ListOptions{}); err != nil || len(jobs) != 0 {
		t.Errorf("jobs made: %d (%v)", len(jobs), err)
	}
	// Bodies whose first refusal on Ollama may be another (a keep_alive: a load-only call
	// is an unload, 200) are queued as before, for Ollama to answer in their turn. One
	// asking for thinking is refused so (TestCapabilityJobsRefusedAtSubmit); a think value
	// Ollama's decoder refuses is its 400 first (syncRefusals, ADR-0141); raw mode with a
	// system is raw mode's refusal (TestRawModeJobsRefusedAtSubmit).
	for _, body := range []string{
		`{"model":"tiny-embed","messages":[],"keep_alive":0}`,
	} {
		if got := post(t, ctx, b.URL, "/jobs", []byte(body)); got.Status != http.StatusAccepted {
			t.Errorf("POST /jobs %s: %d %s, want 202", body, got.Status, got.Body)
		}
	}
}

// A native chat or generate call asking its model for a capability /api/show does not
// list (thinking, tools, insert), which Ollama refuses before it schedules a runner, goes
// straight to Ollama too, not behind the running job; a call the model can take, and an
// unload, are queued as before.
func TestCapabilityRefusalsAreNotQueued(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, withFake(ollamatest.WithModels(
		ollamatest.Model{Name: "tiny-a"}, ollamatest.Model{Name: "thinker", Thinking: true})))
	ctx := testCtx(t, 60*time.Second)
	tools := `"tools":[{"type":"function","function":{"name":"f"}}]`
	refused := []struct{ path, body string }{
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"think":true}`},
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"think":"low","stream":false}`},
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],` + tools + `}`},
		{"/api/chat", `{"model":"thinker","messages":[],` + tools + `}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","suffix":"end"}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","think":true,"stream":false}`},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"reasoning_effort":"low"}`},
		{"/v1/chat/completions", `{"model":"thinker","messages":[{"role":"user","content":"hi"}],"stream":true,` + tools + `}`},
	}
	answeredAsOllamaWhileAJobRuns(t, ctx, b, refused)
	for _, c := range []struct{ path, body string }{
		{"/api/chat", `{"model":"thinker","messages":[{"role":"user","content":"hi"}],"think":true,"stream":false}`},
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"think":false,"stream":false}`},
		{"/api/chat", `{"model":"tiny-a","messages":[],"keep_alive":0,` + tools + `}`}, // an unload
	} {
		if got := post(t, ctx, b.URL, c.path, []byte(c.body)); got.Status != http.StatusOK || got.Header.Get(HeaderJobID) == "" {
			t.Errorf("%s %s: %d %s, job %q; want it queued and answered", c.path, c.body, got.Status, got.Body, got.Header.Get(HeaderJobID))
		}
	}
}

// answeredAsOllamaWhileAJobRuns checks that each call is answered as the fake Ollama
// answers it (a 400: status, Content-Type and bytes) with no job, at once and again
// while a chat holds the worker: sent straight, not behind the running job.
func answeredAsOllamaWhileAJobRuns(t *testing.T, ctx context.Context, b *queuedBundle, calls []struct{ path, body string }) {
	t.Helper()
	check := func() {
		t.Helper()
		for _, c := range calls {
			got, want := post(t, ctx, b.URL, c.path, []byte(c.body)), post(t, ctx, b.Fake.URL, c.path, []byte(c.body))
			if got.Status != http.StatusBadRequest || got.Status != want.Status || got.CType != want.CType || !bytes.Equal(got.Body, want.Body) {
				t.Errorf("%s %s: got %d %q %s, want Ollama's %d %q %s", c.path, c.body, got.Status, got.CType, got.Body, want.Status, want.CType, want.Body)
			}
			if id := got.Header.Get(HeaderJobID); id != "" {
				t.Fatalf("%s %s: queued as job %s", c.path, c.body, id)
			}
		}
	}
	check()
	release := b.Fake.Hold("")
	defer release()
	running := make(chan rawResponse, 1)
	go func() { running <- post(t, ctx, b.URL, "/api/chat", chatBody("tiny-a", "a long one", "false")) }()
	if err := b.Fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	check() // while a job runs
	release()
	if got := <-running; got.Status != http.StatusOK {
		t.Errorf("the running chat: %d %s", got.Status, got.Body)
	}
}

// An unload (an empty chat or generate with keep_alive 0) of an embedding model is
// answered as Ollama answers it, 200 with done_reason "unload": its handlers unload
// before they look at what the model can do.
func TestAnUnloadOfAnEmbeddingModelIsAnsweredAsOllamaDoes(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 60*time.Second)
	for _, c := range []struct{ path, body string }{
		{"/api/chat", `{"model":"tiny-embed","messages":[],"keep_alive":0}`},
		{"/api/generate", `{"model":"tiny-embed","keep_alive":0,"stream":false}`},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		if got.Status != http.StatusOK || !bytes.Contains(got.Body, []byte(`"done_reason":"unload"`)) {
			t.Errorf("%s %s: %d %s, want 200 with done_reason unload", c.path, c.body, got.Status, got.Body)
		}
	}
}
