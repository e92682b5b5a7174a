package gateway

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A "format" Ollama can only refuse (`"JSON"`, `"yaml"`, `5`) is a 400 in Ollama's words
// before a job is made. Ollama checks it only in the completion, after loading the model:
// through foreman the call waited its turn, made the Mac swap models, and got a 500.
func TestAFormatOllamaRefusesIsRefusedBeforeTheQueue(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, withFake(ollamatest.WithModels(
		ollamatest.Model{Name: "tiny-a"}, ollamatest.Model{Name: "thinker", Thinking: true},
		ollamatest.Model{Name: "pic", Image: true})))
	ctx := testCtx(t, 30*time.Second)
	for _, c := range []struct{ path, body, want string }{
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"format":"JSON"}`,
			`{"error":"invalid format: \"\\\"JSON\\\"\"; expected \"json\" or a valid JSON Schema object"}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","stream":false,"format":5}`,
			`{"error":"invalid format: \"5\"; expected \"json\" or a valid JSON Schema object"}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","format":["a"]}`,
			`{"error":"invalid format: \"[\\\"a\\\"]\"; expected \"json\" or a valid JSON Schema object"}`},
		// POST /jobs too: a job that could only fail.
		{"/jobs", `{"kind":"generate","model":"tiny-a","prompt":"hi","format":"yaml"}`,
			`{"error":"invalid format: \"\\\"yaml\\\"\"; expected \"json\" or a valid JSON Schema object"}`},
		// A null after a prompt leaves it, as the decoder leaves a string field.
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","prompt":null,"format":"yaml"}`,
			`{"error":"invalid format: \"\\\"yaml\\\"\"; expected \"json\" or a valid JSON Schema object"}`},
		{"/jobs", `{"kind":"chat","model":"tiny-a","messages":[{"role":"user","content":"hi"}], "Format" : 7 }`,
			`{"error":"invalid format: \"7\"; expected \"json\" or a valid JSON Schema object"}`},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		if got.Status != http.StatusBadRequest || strings.TrimSpace(string(got.Body)) != c.want {
			t.Errorf("%s %s: %d %s, want 400 %s", c.path, c.body, got.Status, got.Body, c.want)
		}
	}
	for _, c := range b.Fake.Calls() {
		if c.Method == http.MethodPost && c.Path != "/api/show" {
			t.Errorf("a refused request reached the target: %+v", c)
		}
	}
	if jobs, _, err := b.Broker.Store.List(ctx, broker.ListOptions{}); err != nil || len(jobs) != 0 {
		t.Errorf("jobs after the refusals: %d, %v; want none", len(jobs), err)
	}

	// What Ollama takes, or answers without the check, is queued as before: the formats
	// it reads, a load (no messages, no prompt), a thinking model's chat (its first
	// completion runs without the format), and the OpenAI routes.
	for _, c := range []struct{ path, body string }{
		{"/api/chat", `{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"hi"}],"format":"json"}`},
		{"/api/chat", `{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"hi"}],"format":{"type":"object"}}`},
		{"/api/generate", `{"model":"tiny-a","stream":false,"prompt":"hi","format":null}`},
		{"/api/generate", `{"model":"tiny-a","stream":false,"prompt":"hi","format":""}`},
		{"/api/chat", `{"model":"tiny-a","stream":false,"messages":[],"format":"yaml"}`},
		{"/api/generate", `{"model":"tiny-a","stream":false,"prompt":"","format":"yaml"}`},
		{"/api/chat", `{"model":"thinker","stream":false,"messages":[{"role":"user","content":"hi"}],"format":"yaml"}`},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"format":"yaml"}`},
		{"/jobs", `{"kind":"chat","model":"tiny-a","messages":[{"role":"user","content":"hi"}], "format" : "json" }`},
		{"/jobs", `{"kind":"chat","model":"tiny-a","messages":[ ],"format":"yaml"}`},
	} {
		if got := post(t, ctx, b.URL, c.path, []byte(c.body)); got.Status != http.StatusOK && got.Status != http.StatusAccepted {
			t.Errorf("%s %s: %d %s, want 200 (202 for /jobs)", c.path, c.body, got.Status, got.Body)
		}
	}
}

// On /v1/chat/completions Ollama's OpenAI layer makes the format of "response_format": a
// json_schema's "schema" as it came. One that is no object (`"yaml"`, `[]`) reached
// Ollama, which refused it only after loading the model, as a 500; it is a 400 in
// Ollama's words (OpenAI's type for a bad request) before a job is made, over POST /jobs
// too.
func TestAnOpenAIResponseFormatOllamaRefusesIsRefusedBeforeTheQueue(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, withFake(ollamatest.WithModels(
		ollamatest.Model{Name: "tiny-a"}, ollamatest.Model{Name: "thinker", Thinking: true})))
	ctx := testCtx(t, 30*time.Second)
	const msgs = `"messages":[{"role":"user","content":"hi"}]`
	for _, c := range []struct{ path, body, want string }{
		{"/v1/chat/completions", `{"model":"tiny-a",` + msgs + `,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":"yaml"}}}`,
			`invalid format: "\"yaml\""; expected "json" or a valid JSON Schema object`},
		{"/v1/chat/completions", `{"model":"tiny-a",` + msgs + `,"stream":true,"response_format":{"type":" JSON_Schema ","json_schema":{"schema":[]}}}`,
			`invalid format: "[]"; expected "json" or a valid JSON Schema object`},
		{"/jobs", `{"kind":"openai_chat","model":"tiny-a",` + msgs + `,"Response_Format":{"type":"json_schema","json_schema":{"schema":5}}}`,
			`invalid format: "5"; expected "json" or a valid JSON Schema object`},
		// /v1/responses: its text.format's schema, for the type json_schema.
		{"/v1/responses", `{"model":"tiny-a","input":"hi","text":{"format":{"type":"json_schema","name":"x","schema":"yaml"}}}`,
			`invalid format: "\"yaml\""; expected "json" or a valid JSON Schema object`},
		{"/v1/responses", `{"model":"tiny-a","instructions":"be brief","input":[],"text":{"format":{"type":"json_schema","schema":[]}}}`,
			`invalid format: "[]"; expected "json" or a valid JSON Schema object`},
		{"/jobs", `{"kind":"openai_responses","model":"tiny-a","input":[{"role":"user","content":"hi"}],"Text":{"format":{"type":"json_schema","schema":5}}}`,
			`invalid format: "5"; expected "json" or a valid JSON Schema object`},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		var msg string
		if c.path == "/jobs" {
			var e struct{ Error string }
			_ = json.Unmarshal(got.Body, &e)
			msg = e.Error
		} else {
			var e struct {
				Error struct{ Message, Type string }
			}
			_ = json.Unmarshal(got.Body, &e)
			if e.Error.Type != "invalid_request_error" {
				t.Errorf("%s %s: error type %q, want invalid_request_error", c.path, c.body, e.Error.Type)
			}
			msg = e.Error.Message
		}
		if got.Status != http.StatusBadRequest || msg != c.want {
			t.Errorf("%s %s: %d %s, want 400 %q", c.path, c.body, got.Status, got.Body, c.want)
		}
	}
	for _, c := range b.Fake.Calls() {
		if c.Method == http.MethodPost && c.Path != "/api/show" {
			t.Errorf("a refused request reached the target: %+v", c)
		}
	}
	if jobs, _, err := b.Broker.Store.List(ctx, broker.ListOptions{}); err != nil || len(jobs) != 0 {
		t.Errorf("jobs after the refusals: %d, %v; want none", len(jobs), err)
	}

	// What Ollama's layer turns into a format it takes, or ignores, is queued as before.
	for _, c := range []struct{ path, body string }{
		{"/v1/chat/completions", `{"model":"tiny-a",` + msgs + `,"response_format":{"type":"json_object"}}`},
		{"/v1/chat/completions", `{"model":"tiny-a",` + msgs + `,"response_format":{"type":"json_schema","json_schema":{"schema":{"type":"object"}}}}`},
		{"/v1/chat/completions", `{"model":"tiny-a",` + msgs + `,"response_format":{"type":"json_schema","json_schema":{"schema":"json"}}}`},
		{"/v1/chat/completions", `{"model":"tiny-a",` + msgs + `,"response_format":{"type":"json_schema","json_schema":{"schema":null}}}`},
		{"/v1/chat/completions", `{"model":"tiny-a",` + msgs + `,"response_format":{"type":"json_schema"}}`},
		{"/v1/chat/completions", `{"model":"tiny-a",` + msgs + `,"response_format":{"type":"text","json_schema":{"schema":"yaml"}}}`},
		{"/v1/chat/completions", `{"model":"thinker",` + msgs + `,"response_format":{"type":"json_schema","json_schema":{"schema":"yaml"}}}`},
		{"/api/chat", `{"model":"tiny-a","stream":false,` + msgs + `,"response_format":{"type":"json_schema","json_schema":{"schema":"yaml"}}}`},
		{"/jobs", `{"kind":"openai_chat","model":"tiny-a",` + msgs + `,"format":"yaml"}`},
		{"/v1/responses", `{"model":"tiny-a","input":"hi","text":{"format":{"type":"json_schema","schema":{"type":"object"}}}}`},
		{"/v1/responses", `{"model":"tiny-a","input":"hi","text":{"format":{"type":"JSON_Schema","schema":"yaml"}}}`}, // Ollama's layer matches the type exactly
		{"/v1/responses", `{"model":"tiny-a","input":"hi","text":{"format":{"type":"text","schema":"yaml"}}}`},
		{"/v1/responses", `{"model":"tiny-a","input":"hi","format":"yaml"}`}, // no member of the route
		{"/v1/responses", `{"model":"thinker","input":"hi","text":{"format":{"type":"json_schema","schema":"yaml"}}}`},
		{"/v1/responses", `{"model":"tiny-a","input":[],"text":{"format":{"type":"json_schema","schema":"yaml"}}}`}, // a load: no completion
		{"/jobs", `{"kind":"openai_responses","model":"tiny-a","input":"hi","format":"yaml"}`},
	} {
		if got := post(t, ctx, b.URL, c.path, []byte(c.body)); got.Status != http.StatusOK && got.Status != http.StatusAccepted {
			t.Errorf("%s %s: %d %s, want 200 (202 for /jobs)", c.path, c.body, got.Status, got.Body)
		}
	}
}

// A model created again under its name as a thinking model since the last poll of the
// model list has its chat run without the format check, as Ollama runs it: before
// refusing a format, foreman reads the model list again and, the digest being another,
// the model's capabilities (as a capability refusal is confirmed, ADR-0129). Before, the
// old model's capabilities refused it until the next poll.
func TestAFormatRefusalIsConfirmedAgainstAModelCreatedSinceThePoll(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, withFake(ollamatest.WithModels(ollamatest.Model{Name: "tiny-a"})))
	ctx := testCtx(t, 30*time.Second)
	body := []byte(`{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"hi"}],"format":"yaml"}`)
	if got := post(t, ctx, b.URL, "/api/chat", body); got.Status != http.StatusBadRequest {
		t.Fatalf("before the model changed: %d %s, want 400", got.Status, got.Body)
	}
	// Confirming an unchanged model's refusal reads the list again, not its /api/show.
	shows, _ := showsAndTags(b.Fake)
	if got := post(t, ctx, b.URL, "/api/chat", body); got.Status != http.StatusBadRequest {
		t.Errorf("the same model again: %d %s, want 400", got.Status, got.Body)
	}
	if n, _ := showsAndTags(b.Fake); n != shows {
		t.Errorf("%d /api/show calls confirming an unchanged model's refusal, want none", n-shows)
	}
	b.Fake.AddModel(ollamatest.Model{Name: "tiny-a", Thinking: true, Digest: "sha256:" + digestHex('8')})
	if got := post(t, ctx, b.URL, "/api/chat", body); got.Status != http.StatusOK {
		t.Errorf("after the model was created again as a thinking one: %d %s, want 200", got.Status, got.Body)
	}
}
