package gateway

import (
	"bytes"
	"fmt"
	"net/http"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A model alias of the target's (Ollama's /api/experimental/aliases) is resolved as
// Ollama resolves it, on the routes where Ollama does (ADR-0068): Claude Code's model
// names through `ollama launch claude`'s prefix aliases, an exact alias made through
// foreman's relay of the aliases route, one made on the target since the last poll.
// The job runs on, and is queued under, the model the alias names; its body goes on as
// it came.
func TestAliasedModelsAreQueuedUnderTheirTarget(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 60*time.Second)
	b.Fake.SetAlias(ollama.Alias{Alias: "claude-sonnet-", Target: "tiny-b", PrefixMatching: true})
	if err := b.Inv.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	// Made through foreman: relayed, and known at once (the inventory polls after a change).
	resp, out := b.request(t, http.MethodPost, "/api/experimental/aliases", []byte(`{"alias":"fast","target":"tiny-a"}`))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /api/experimental/aliases: %d %s", resp.StatusCode, out)
	}
	resp, out = b.request(t, http.MethodGet, "/api/experimental/aliases", nil)
	if resp.StatusCode != http.StatusOK || !bytes.Contains(out, []byte(`"alias":"fast"`)) || !bytes.Contains(out, []byte(`"claude-sonnet-"`)) {
		t.Fatalf("GET /api/experimental/aliases: %d %s", resp.StatusCode, out)
	}

	cases := []struct{ path, body, target string }{
		{"/v1/messages", `{"model":"claude-sonnet-4-5-20250929","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`, "tiny-b:latest"},
		{"/api/chat", string(chatBody("FAST", "hi", "false")), "tiny-a:latest"},
		{"/api/generate", `{"model":"fast","prompt":"hi","stream":false}`, "tiny-a:latest"},
		{"/v1/chat/completions", string(chatBody("library/fast:latest", "hi", "")), "tiny-a:latest"},
	}
	for _, c := range cases {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		want := post(t, ctx, b.Fake.URL, c.path, []byte(c.body))
		if got.Status != http.StatusOK || got.Status != want.Status || !bytes.Equal(got.Body, want.Body) {
			t.Errorf("%s %s: got %d %s, want %d %s", c.path, c.body, got.Status, got.Body, want.Status, want.Body)
			continue
		}
		j := waitRecord(t, ctx, b.Broker.Store, got.Header.Get(HeaderJobID), func(j *broker.Job) bool { return j.State.Terminal() })
		if j.State != broker.StateDone || j.Model != c.target {
			t.Errorf("%s %s: job %s of %q, want done on %q", c.path, c.body, j.State, j.Model, c.target)
		}
	}
	// The worker sent each body as it came: the target resolved the alias itself.
	for _, c := range b.Fake.Calls() {
		if c.Path == "/v1/messages" && !bytes.Contains(c.Body, []byte(`"claude-sonnet-4-5-20250929"`)) {
			t.Errorf("the target got %s", c.Body)
		}
	}

	// POST /jobs too.
	id := jobsSubmit(t, b.testBundle, `{"model":"claude-sonnet-4","messages":[{"role":"user","content":"hi"}]}`)
	if j := waitRecord(t, ctx, b.Broker.Store, id, func(j *broker.Job) bool { return j.State.Terminal() }); j.State != broker.StateDone || j.Model != "tiny-b:latest" {
		t.Errorf("submitted under an alias: %s of %q", j.State, j.Model)
	}

	// Made on the target since the last poll: found by the poll an unknown name makes.
	b.Fake.SetAlias(ollama.Alias{Alias: "late", Target: "tiny-b"})
	if got := post(t, ctx, b.URL, "/api/chat", chatBody("late", "hi", "false")); got.Status != http.StatusOK {
		t.Errorf("an alias made since the last poll: %d %s", got.Status, got.Body)
	}

	// An alias to a model the target lacks is Ollama's 404 for the name asked, with no job.
	b.Fake.SetAlias(ollama.Alias{Alias: "gone", Target: "not-installed"})
	got := post(t, ctx, b.URL, "/api/chat", chatBody("gone", "hi", "false"))
	if got.Status != http.StatusNotFound || errorBody(t, got.Body) != "model 'gone' not found" || got.Header.Get(HeaderJobID) != "" {
		t.Errorf("an alias to a missing model: %d %s (job %q)", got.Status, got.Body, got.Header.Get(HeaderJobID))
	}

	// Ollama's embedding routes read no aliases: an embedding under an alias name is
	// its 404, and POST /jobs refuses it as it refuses an unknown model.
	b.Fake.SetAlias(ollama.Alias{Alias: "vectors", Target: "tiny-embed"})
	for _, c := range []struct{ path, body string }{
		{"/api/embed", `{"model":"vectors","input":"x"}`},
		{"/api/embeddings", `{"model":"vectors","prompt":"x"}`},
		{"/v1/embeddings", `{"model":"vectors","input":"x"}`},
	} {
		if got := post(t, ctx, b.URL, c.path, []byte(c.body)); got.Status != http.StatusNotFound || got.Header.Get(HeaderJobID) != "" {
			t.Errorf("%s under an alias: %d %s (job %q), want 404 and no job", c.path, got.Status, got.Body, got.Header.Get(HeaderJobID))
		}
	}
	// An embedding job runs on a chat model too (ADR-0053): nor is an alias of one read.
	b.Fake.SetAlias(ollama.Alias{Alias: "chatty", Target: "tiny-a"})
	for _, c := range []struct{ kind, alias, input string }{
		{"embed", "vectors", "input"},
		{"embed", "chatty", "input"},
		{"embeddings", "chatty", "prompt"},
		{"openai_embeddings", "chatty", "input"},
	} {
		body := fmt.Sprintf(`{"kind":%q,"model":%q,%q:"x"}`, c.kind, c.alias, c.input)
		resp, out = b.request(t, http.MethodPost, "/jobs", []byte(body))
		if resp.StatusCode != http.StatusNotFound || errorBody(t, out) != fmt.Sprintf("model '%s' not found", c.alias) {
			t.Errorf("an embedding job under an alias, %s: %d %s, want 404", body, resp.StatusCode, out)
		}
	}
}

// On a shared NATS a job under an alias may run on another Mac that has the model but
// not the alias: its body then names the model too, last, where Ollama reads it
// (ADR-0068). Here the Mac forgets the alias after foreman's last poll, as the other Mac
// never had it: the call still runs, on the model.
func TestAliasedBodyOnASharedNATSNamesTheModel(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, withGateway(func(c *Config) { c.OwnModelsOnly = true }))
	ctx := testCtx(t, 60*time.Second)
	b.Fake.SetAlias(ollama.Alias{Alias: "fast", Target: "tiny-b"})
	if err := b.Inv.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	b.deleteAtFake(t, ctx, ollama.AliasesPath, `{"alias":"fast"}`)

	body := chatBody("fast", "hi", "false")
	got := post(t, ctx, b.URL, "/api/chat", body)
	want := post(t, ctx, b.Fake.URL, "/api/chat", chatBody("tiny-b:latest", "hi", "false"))
	if got.Status != http.StatusOK || !bytes.Equal(got.Body, want.Body) {
		t.Fatalf("an aliased call on a shared NATS: %d %s, want tiny-b's answer %s", got.Status, got.Body, want.Body)
	}
	sent := 0
	for _, c := range b.Fake.Calls() {
		if c.Path == "/api/chat" && bytes.Contains(c.Body, []byte(`,"model":"tiny-b:latest"`)) && bytes.HasPrefix(c.Body, []byte(`{"model":"fast"`)) {
			sent++
		}
	}
	if sent != 1 {
		t.Errorf("the worker's call did not add the model to the body as it came")
	}

	// A call naming the model itself names it once (streamed, ADR-0050, and no more).
	if got := post(t, ctx, b.URL, "/api/chat", chatBody("tiny-b", "plain", "false")); got.Status != http.StatusOK {
		t.Fatalf("a call naming the model: %d %s", got.Status, got.Body)
	}
	plain, calls := chatBody("tiny-b", "plain", "true"), 0
	for _, c := range b.Fake.Calls() {
		if c.Path == "/api/chat" && bytes.Contains(c.Body, []byte("plain")) {
			if calls++; !bytes.Equal(c.Body, plain) {
				t.Errorf("a call naming the model went to the target as %s, want %s", c.Body, plain)
			}
		}
	}
	if calls != 1 {
		t.Errorf("a call naming the model reached the target %d times, want once", calls)
	}
}

// A refusal names the alias the call asked by, and the model it stands for: here a
// shared NATS's foreman whose Mac answers its polls with an error status, the alias
// remembered from the run before.
func TestRefusalNamesTheAliasAsked(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withoutInitialPoll(), withGateway(func(c *Config) { c.OwnModelsOnly = true }),
		withInventory(func(c *ollama.InventoryConfig) {
			c.RememberedAliases = []ollama.Alias{{Alias: "fast", Target: "beta"}}
		}))
	b.Fake.FailNextOn("/api/tags", 1<<20, ollamatest.Fail500)
	resp, out := b.request(t, http.MethodPost, "/api/chat", chatBody("fast", "hi", "false"))
	wantError(t, resp, out, http.StatusBadGateway, `model "fast" (an alias of "beta:latest") is in no list`)
	if id := resp.Header.Get(HeaderJobID); id != "" {
		t.Errorf("refused, yet job %s", id)
	}
}
