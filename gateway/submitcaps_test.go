package gateway

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// capsModels are the fake's models for the capability tests: tiny-a completes only,
// thinker thinks too, tiny-embed embeds only. No fake model has tools or insert.
func capsModels() bundleOption {
	return withFake(ollamatest.WithModels(ollamatest.Model{Name: "tiny-a"}, ollamatest.Model{Name: "thinker", Thinking: true},
		ollamatest.Model{Name: "tiny-embed", Embedding: true}))
}

// POST /jobs refuses at submit a job asking its model for thinking, tools or insert
// that the model's /api/show does not list, on the kinds whose sync routes send such a
// call straight to Ollama (native chat and generate, /v1/chat/completions), in the
// words of Ollama's first refusal of that body (v0.17.4 server/routes.go): queued, it
// waited its turn only to fail with them.
func TestCapabilityJobsRefusedAtSubmit(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, capsModels())
	ctx := testCtx(t, 30*time.Second)
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	tools := `"tools":[{"type":"function","function":{"name":"f"}}]`
	full := func(m string) string { return "registry.ollama.ai/library/" + m + ":latest" }
	cases := []struct{ body, want string }{
		// Native chat: thinking (a think that enables it), then tools (scheduleRunner's
		// words name the model in full).
		{`{"model":"tiny-a",` + msgs + `,"think":true}`, `"tiny-a" does not support thinking`},
		{`{"model":"tiny-a",` + msgs + `,"think":"low"}`, `"tiny-a" does not support thinking`},
		{`{"model":"tiny-a",` + msgs + `,"think":"\u006c\u006Fw"}`, `"tiny-a" does not support thinking`}, // "low", as the decoder reads it
		{`{"kind":"chat","model":"tiny-a:latest",` + msgs + `,"think":"high",` + tools + `}`, `"tiny-a:latest" does not support thinking`},
		{`{"model":"tiny-a",` + msgs + `,` + tools + `}`, full("tiny-a") + " does not support tools"},
		{`{"model":"thinker",` + msgs + `,"think":true,` + tools + `}`, full("thinker") + " does not support tools"},
		{`{"model":"thinker","messages":[],` + tools + `}`, full("thinker") + " does not support tools"},
		{`{"model":"TINY-A",` + msgs + `,` + tools + `}`, full("tiny-a") + " does not support tools"}, // the stored name's case
		// An embedding model: Ollama's thinking check comes before its completion check.
		{`{"model":"tiny-embed",` + msgs + `,"think":true}`, `"tiny-embed" does not support thinking`},
		{`{"model":"tiny-embed",` + msgs + `,"keep_alive":"5m",` + tools + `}`, `"tiny-embed" does not support chat`},
		// Native generate: raw mode's refusal, a think string on a model without Ollama's
		// harmony parser, thinking, then insert.
		{`{"kind":"generate","model":"tiny-a","prompt":"hi","suffix":"end"}`, full("tiny-a") + " does not support insert"},
		{`{"kind":"generate","model":"thinker","prompt":"hi","think":true,"suffix":"end"}`, full("thinker") + " does not support insert"},
		{`{"kind":"generate","model":"tiny-a","prompt":"hi","think":true}`, `"tiny-a" does not support thinking`},
		{`{"kind":"generate","model":"tiny-a","prompt":"hi","think":"medium","suffix":"end"}`, `think value "medium" is not supported for this model`},
		{`{"kind":"generate","model":"tiny-a","prompt":"hi","raw":true,"system":"s","suffix":"end"}`, "raw mode does not support template, system, or context"},
		{`{"kind":"generate","model":"tiny-embed","prompt":"hi","think":true}`, `"tiny-embed" does not support thinking`},
		{`{"kind":"generate","model":"tiny-embed","prompt":"hi","keep_alive":"5m","suffix":"end"}`, `"tiny-embed" does not support generate`},
		// /v1/chat/completions: a reasoning effort, then tools.
		{`{"kind":"openai_chat","model":"tiny-a",` + msgs + `,"reasoning_effort":"high"}`, `"tiny-a" does not support thinking`},
		{`{"kind":"openai_chat","model":"tiny-a",` + msgs + `,"reasoning":{"effort":"low"},"reasoning_effort":"none"}`, `"tiny-a" does not support thinking`},
		{`{"kind":"openai_chat","model":"tiny-a",` + msgs + `,` + tools + `}`, full("tiny-a") + " does not support tools"},
		{`{"kind":"openai_chat","model":"thinker",` + msgs + `,"reasoning_effort":"high",` + tools + `}`, full("thinker") + " does not support tools"},
		{`{"kind":"openai_chat","model":"tiny-a",` + msgs + `,"reasoning_effort":"max",` + tools + `}`,
			`invalid reasoning value: 'max' (must be "high", "medium", "low", or "none")`},
	}
	for _, c := range cases {
		got := post(t, ctx, b.URL, "/jobs", []byte(c.body))
		if got.Status != http.StatusBadRequest || errorBody(t, got.Body) != c.want {
			t.Errorf("POST /jobs %s: %d %s, want 400 %q", c.body, got.Status, got.Body, c.want)
		}
	}
	if jobs, _, err := b.Broker.Store.List(context.WithoutCancel(ctx), broker.ListOptions{}); err != nil || len(jobs) != 0 {
		t.Errorf("jobs made: %d (%v)", len(jobs), err)
	}

	// Where the fake answers as Ollama does (the native routes, a model that completes),
	// the sync route's answer is the same words.
	for _, c := range cases[:7] {
		sync := post(t, ctx, b.URL, "/api/chat", bytes.Replace([]byte(c.body), []byte(`"kind":"chat",`), nil, 1))
		job := post(t, ctx, b.URL, "/jobs", []byte(c.body))
		if sync.Status != job.Status || !bytes.Equal(bytes.TrimSpace(sync.Body), bytes.TrimSpace(job.Body)) {
			t.Errorf("%s: POST /jobs %d %s, /api/chat %d %s", c.body, job.Status, job.Body, sync.Status, sync.Body)
		}
	}
}

// A job that asks nothing its model lacks, or asks it on a kind whose sync route queues
// it (responses, messages, completions), or as an unload, is accepted as before.
func TestCapabilityJobsAcceptedWhenAsked(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, capsModels())
	ctx := testCtx(t, 30*time.Second)
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	tools := `"tools":[{"type":"function","function":{"name":"f"}}]`
	for _, body := range []string{
		`{"model":"tiny-a",` + msgs + `}`,
		`{"model":"tiny-a",` + msgs + `,"think":false}`,
		`{"model":"tiny-a",` + msgs + `,"think":null,"tools":[],"suffix":"x"}`,
		`{"model":"thinker",` + msgs + `,"think":true}`,
		`{"model":"thinker",` + msgs + `,"think":"high"}`,
		`{"model":"tiny-a","messages":[],"keep_alive":0,` + tools + `}`, // an unload
		`{"kind":"generate","model":"tiny-a","prompt":"hi","suffix":"","think":false}`,
		`{"kind":"generate","model":"thinker","prompt":"hi","think":true}`,
		`{"kind":"generate","model":"tiny-a","prompt":"","keep_alive":0,"suffix":"end"}`, // an unload
		`{"kind":"generate","model":"tiny-a","prompt":"hi",` + tools + `}`,               // generate has no tools
		`{"kind":"openai_chat","model":"tiny-a",` + msgs + `,"reasoning_effort":"none"}`,
		`{"kind":"openai_chat","model":"tiny-a",` + msgs + `,"reasoning":{"effort":"none"},"reasoning_effort":"high"}`,
		`{"kind":"openai_chat","model":"tiny-a",` + msgs + `,"think":true,"suffix":"x"}`, // not its members
		`{"kind":"openai_responses","model":"tiny-a","input":"hi",` + tools + `}`,
		`{"kind":"anthropic_messages","model":"tiny-a","max_tokens":4,` + msgs + `,"thinking":{"type":"enabled","budget_tokens":1024}}`,
		`{"kind":"openai_completion","model":"tiny-a","prompt":"hi","suffix":"end"}`,
		// Bodies whose first refusal foreman cannot tell: a think string on generate for a
		// model that thinks (refused first unless its parser is harmony); a member read
		// for the refusal holding a value Ollama's decoder refuses first (inside a list or
		// an object). A member of a type the native decoder, or the OpenAI or Anthropic
		// layer's, refuses is its 400 at submit (syncRefusals, ADR-0141, ADR-0142).
		`{"kind":"generate","model":"thinker","prompt":"hi","think":"high","suffix":"end"}`,
		`{"model":"tiny-a",` + msgs + `,"tools":[1]}`,
		`{"kind":"openai_chat","model":"tiny-a",` + msgs + `,"reasoning":{"effort":5},` + tools + `}`,
	} {
		if got := post(t, ctx, b.URL, "/jobs", []byte(body)); got.Status != http.StatusAccepted {
			t.Errorf("POST /jobs %s: %d %s, want 202", body, got.Status, got.Body)
		}
	}
}

// Capabilities that cannot be read (the target's /api/show fails, or lists none, an
// Ollama before 0.6) refuse nothing: the job is queued as before, for Ollama to answer
// in its turn.
func TestCapabilityJobsAcceptedWhenCapabilitiesUnknown(t *testing.T) {
	t.Parallel()
	body := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"think":true,"tools":[{"type":"function","function":{"name":"f"}}]}`
	for name, opt := range map[string]bundleOption{
		"show fails": withTarget(func(c ollama.Client) ollama.Client { return noShow{c} }),
		"no caps list": withTarget(func(c ollama.Client) ollama.Client {
			return showTarget{Client: c, answer: `{"details":{"family":"llama"}}`}
		}),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := newQueuedBundle(t, nil, capsModels(), opt)
			ctx := testCtx(t, 30*time.Second)
			for range 2 { // the second after the first look-up ended
				if got := post(t, ctx, b.URL, "/jobs", []byte(body)); got.Status != http.StatusAccepted {
					t.Errorf("POST /jobs %s: %d %s, want 202", body, got.Status, got.Body)
				}
			}
		})
	}
}

// The check reads only what the cache holds: after cannotComplete's look-up failed, the
// submit makes no second /api/show call of its own (each waits up to showTimeout on an
// Ollama whose /api/show hangs).
func TestCapabilityJobsLookNothingUp(t *testing.T) {
	t.Parallel()
	var shows atomic.Int32
	b := newQueuedBundle(t, nil, capsModels(), withTarget(func(c ollama.Client) ollama.Client { return countShows{noShow{c}, &shows} }))
	ctx := testCtx(t, 30*time.Second)
	body := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"think":true}`
	if got := post(t, ctx, b.URL, "/jobs", []byte(body)); got.Status != http.StatusAccepted {
		t.Errorf("POST /jobs %s: %d %s, want 202", body, got.Status, got.Body)
	}
	if n := shows.Load(); n != 1 {
		t.Errorf("the submit asked /api/show %d times, want once", n)
	}
}

// countShows counts the /api/show calls made of its target.
type countShows struct {
	ollama.Client
	n *atomic.Int32
}

func (c countShows) Do(ctx context.Context, method, path string, header http.Header, body io.Reader) (*http.Response, error) {
	if path == "/api/show" {
		c.n.Add(1)
	}
	return c.Client.Do(ctx, method, path, header, body)
}

// A remote model (a cloud model's /api/show names its remote_host and remote_model) is
// not refused at submit for what its capabilities lack, a format or a picture: Ollama's chat and generate
// handlers send its call on to the remote host before any of the checks the refusal
// stands for (v0.17.4 server/routes.go: the remote branch comes before raw mode, the
// think value, thinking and scheduleRunner's capabilities), and the remote answers it.
func TestCapabilityJobsOfARemoteModelQueued(t *testing.T) {
	t.Parallel()
	remote := withTarget(func(c ollama.Client) ollama.Client {
		return showTarget{Client: c, answer: `{"capabilities":["completion"],"remote_host":"https://ollama.com:443","remote_model":"tiny-a"}`}
	})
	b := newQueuedBundle(t, nil, capsModels(), remote)
	ctx := testCtx(t, 30*time.Second)
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	tools := `"tools":[{"type":"function","function":{"name":"f"}}]`
	for _, body := range []string{
		`{"model":"tiny-a",` + msgs + `,"think":true}`,
		`{"model":"tiny-a",` + msgs + `,` + tools + `}`,
		`{"kind":"generate","model":"tiny-a","prompt":"hi","suffix":"end"}`,
		`{"kind":"generate","model":"tiny-a","prompt":"hi","think":"medium","suffix":"end"}`,
		`{"kind":"openai_chat","model":"tiny-a",` + msgs + `,"reasoning_effort":"high"}`,
		// Nor for a format Ollama's runner refuses, nor a picture of a model whose
		// capabilities name no image: the remote's to answer too.
		`{"model":"tiny-a",` + msgs + `,"format":"yaml"}`,
		`{"kind":"generate","model":"tiny-a","prompt":"hi","format":5}`,
		`{"kind":"openai_images","model":"tiny-a","prompt":"a lighthouse"}`,
	} {
		for range 2 { // the second with the capabilities cached
			if got := post(t, ctx, b.URL, "/jobs", []byte(body)); got.Status != http.StatusAccepted {
				t.Errorf("POST /jobs %s: %d %s, want 202", body, got.Status, got.Body)
			}
		}
	}
}

// Capabilities read before the model changed under its name (pulled or created again:
// its digest in the model list is another) refuse nothing: the model is looked up again.
// Before, the cache answered for up to capsTTL with the old model's, and POST /jobs
// refused a job the new model runs (a thinking job, a chat job of a former embedding
// model) with words Ollama no longer gives.
func TestCapabilityJobsOfAModelChangedUnderItsName(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, capsModels())
	ctx := testCtx(t, 30*time.Second)
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	thinks := `{"model":"tiny-a",` + msgs + `,"think":true}`
	chats := `{"model":"tiny-embed",` + msgs + `}`
	for body, want := range map[string]string{thinks: `"tiny-a" does not support thinking`, chats: `"tiny-embed" does not support chat`} {
		if got := post(t, ctx, b.URL, "/jobs", []byte(body)); got.Status != http.StatusBadRequest || errorBody(t, got.Body) != want {
			t.Fatalf("POST /jobs %s: %d %s, want 400 %q", body, got.Status, got.Body, want)
		}
	}
	b.Fake.AddModel(ollamatest.Model{Name: "tiny-a", Thinking: true, Digest: "a2"})
	b.Fake.AddModel(ollamatest.Model{Name: "tiny-embed", Digest: "e2"})
	for seen := 0; seen < 2; {
		if err := b.Inv.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		seen = 0
		for _, m := range b.Inv.Snapshot().Tags.Models {
			if m.Digest == "a2" || m.Digest == "e2" {
				seen++
			}
		}
	}
	for _, body := range []string{thinks, chats} {
		if got := post(t, ctx, b.URL, "/jobs", []byte(body)); got.Status != http.StatusAccepted {
			t.Errorf("POST /jobs %s after the model changed: %d %s, want 202", body, got.Status, got.Body)
		}
	}
}
