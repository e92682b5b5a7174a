package gateway

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// refusalMessage is the message of a refusal in any of foreman's shapes: {"error": "..."}
// (foreman's and Ollama's native routes), {"error":{"message": "..."}} (the OpenAI and
// Anthropic layers').
func refusalMessage(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Error json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Error) == 0 {
		t.Errorf("no error in %q", body)
		return ""
	}
	var msg string
	if json.Unmarshal(e.Error, &msg) == nil {
		return msg
	}
	var nested struct {
		Message string `json:"message"`
	}
	if err := json.Unmarshal(e.Error, &nested); err != nil {
		t.Errorf("no error message in %q", body)
	}
	return nested.Message
}

// hiMessages is a chat's "messages" member saying hi.
const hiMessages = `"messages":[{"role":"user","content":"hi"}]`

// syncRefusals are bodies the sync route of their kind refuses before it queues them,
// with the status and words POST /jobs answers too (TestJobsSubmitMakesTheSyncRoutesChecks;
// FuzzJobsMatchSyncRoutes starts from them).
var syncRefusals = []struct {
	kind   broker.Kind
	body   string // the sync route's body; /jobs gets it with "kind" added
	status int
	want   string
}{
	{broker.KindOpenAIChat, `{"model":"tiny-a"}`, 400, "[] is too short - 'messages'"},
	{broker.KindOpenAIChat, `{"model":"tiny-a","messages":[]}`, 400, "[] is too short - 'messages'"},
	{broker.KindOpenAIChat, `{"model":"tiny-a",` + hiMessages + `,"top_logprobs":21}`, 400, "top_logprobs must be between 0 and 20"},
	{broker.KindChat, `{"model":"tiny-a",` + hiMessages + `,"top_logprobs":-1}`, 400, "top_logprobs must be between 0 and 20"},
	{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","top_logprobs":21}`, 400, "top_logprobs must be between 0 and 20"},
	{broker.KindOpenAICompletion, `{"model":"tiny-a","prompt":"hi","logprobs":21}`, 400, "top_logprobs must be between 0 and 20"},
	{broker.KindAnthropicMessages, `{"model":"tiny-a",` + hiMessages + `}`, 400, "max_tokens is required and must be positive"},
	{broker.KindAnthropicMessages, `{"model":"tiny-a","max_tokens":0,` + hiMessages + `}`, 400, "max_tokens is required and must be positive"},
	{broker.KindAnthropicMessages, `{"model":"tiny-a","max_tokens":4,"messages":[]}`, 400, "messages is required"},
	{broker.KindAnthropicMessages, `{"model":"tiny-a","max_tokens":4}`, 400, "messages is required"},
	{broker.KindOpenAIEmbeddings, `{"model":"tiny-a","input":"x","encoding_format":"bad"}`, 400,
		"Invalid value for 'encoding_format' = bad. Supported values: ['float', 'base64']."},
	{broker.KindOpenAIEmbeddings, `{"model":"tiny-a","input":[]}`, 400, "invalid input"},
	{broker.KindOpenAIEmbeddings, `{"model":"tiny-a"}`, 400, "invalid input"},
	{broker.KindChat, `{"model":"tiny-a",` + hiMessages + `,"stream":"yes"}`, 400,
		"json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool"},
	{broker.KindGenerate, `{"model":5,"prompt":"hi","think":"very"}`, 400,
		`invalid think value: "very" (must be "high", "medium", "low", true, or false)`},
	{broker.KindGenerate, `{"model":["tiny-a"],"prompt":"hi"}`, 400,
		"json: cannot unmarshal array into Go struct field GenerateRequest.model of type string"},
	{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","options":{"temperature":"hot"}}`, 400,
		`option "temperature" must be of type float32`},
	// Options that are no object are Ollama's decoder's 400, before anything else.
	{broker.KindChat, `{"model":"tiny-a",` + hiMessages + `,"options":"x"}`, 400,
		"json: cannot unmarshal string into Go struct field ChatRequest.options of type map[string]interface {}"},
	{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","top_logprobs":50,"options":[1]}`, 400,
		"json: cannot unmarshal array into Go struct field GenerateRequest.options of type map[string]interface {}"},
	{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","options":{"top_k":1},"options":true}`, 400,
		"json: cannot unmarshal bool into Go struct field GenerateRequest.options of type map[string]interface {}"},
	{broker.KindEmbed, `{"model":"tiny-a","input":"hi","options":5}`, 400,
		"json: cannot unmarshal number into Go struct field EmbedRequest.options of type map[string]interface {}"},
	{broker.KindEmbeddings, `{"model":"tiny-a","prompt":"hi","options":5}`, 400,
		"json: cannot unmarshal number into Go struct field EmbeddingRequest.options of type map[string]interface {}"},
	// Other members of a type Ollama's decoder refuses on chat and generate: its 400,
	// before anything else (ADR-0141), a model it lacks included.
	{broker.KindChat, `{"model":"tiny-a",` + hiMessages + `,"tools":"x"}`, 400,
		"json: cannot unmarshal string into Go struct field ChatRequest.tools of type api.Tools"},
	{broker.KindChat, `{"model":"ghost","messages":"hi"}`, 400,
		"json: cannot unmarshal string into Go struct field ChatRequest.messages of type []api.Message"},
	{broker.KindChat, `{"model":"tiny-a",` + hiMessages + `,"think":"weird"}`, 400,
		`invalid think value: "weird" (must be "high", "medium", "low", true, or false)`},
	{broker.KindChat, `{"model":"tiny-embed",` + hiMessages + `,"tools":[{"type":"function","function":{"name":"f"}}],"think":"very"}`, 400,
		`invalid think value: "very" (must be "high", "medium", "low", true, or false)`},
	{broker.KindChat, `{"model":"tiny-a",` + hiMessages + `,"think":5,"options":"x"}`, 400,
		`think must be a boolean or string ("high", "medium", "low", true, or false)`},
	{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","images":"x"}`, 400,
		"json: cannot unmarshal string into Go struct field GenerateRequest.images of type []api.ImageData"},
	{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","keep_alive":[1]}`, 400, "Unsupported type: '[]interface {}'"},
	{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","keep_alive":"5x"}`, 400, `time: unknown unit "x" in duration "5x"`},
	{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","context":"x"}`, 400,
		"json: cannot unmarshal string into Go struct field GenerateRequest.context of type []int"},
	{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","raw":"yes"}`, 400,
		"json: cannot unmarshal string into Go struct field GenerateRequest.raw of type bool"},
	{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","top_logprobs":50,"width":1.5}`, 400,
		"json: cannot unmarshal number 1.5 into Go struct field GenerateRequest.width of type int32"},
	// A member of a type the OpenAI or Anthropic layer's decoder refuses: its 400, before
	// the layer's own checks and anything else (ADR-0142), a model it lacks included.
	{broker.KindOpenAIChat, `{"model":"ghost","messages":"hi"}`, 400,
		"json: cannot unmarshal string into Go struct field ChatCompletionRequest.messages of type []openai.Message"},
	{broker.KindOpenAIChat, `{"model":"tiny-a",` + hiMessages + `,"max_tokens":"x"}`, 400,
		"json: cannot unmarshal string into Go struct field ChatCompletionRequest.max_tokens of type int"},
	{broker.KindOpenAIChat, `{"model":"tiny-a","messages":[],"temperature":"hot"}`, 400,
		"json: cannot unmarshal string into Go struct field ChatCompletionRequest.temperature of type float64"},
	{broker.KindOpenAIChat, `{"model":"tiny-a",` + hiMessages + `,"stream_options":5}`, 400,
		"json: cannot unmarshal number into Go struct field ChatCompletionRequest.stream_options of type openai.StreamOptions"},
	{broker.KindOpenAIChat, `{"model":"tiny-a",` + hiMessages + `,"tools":{}}`, 400,
		"json: cannot unmarshal object into Go struct field ChatCompletionRequest.tools of type []api.Tool"},
	{broker.KindOpenAIChat, `{"model":5,` + hiMessages + `}`, 400,
		"json: cannot unmarshal number into Go struct field ChatCompletionRequest.model of type string"},
	{broker.KindOpenAIChat, `{"model":"tiny-a",` + hiMessages + `,"stream":"yes"}`, 400,
		"json: cannot unmarshal string into Go struct field ChatCompletionRequest.stream of type bool"},
	{broker.KindOpenAICompletion, `{"model":"tiny-a","prompt":"hi","logprobs":true}`, 400,
		"json: cannot unmarshal bool into Go struct field CompletionRequest.logprobs of type int"},
	{broker.KindOpenAICompletion, `{"model":"tiny-a","prompt":"hi","frequency_penalty":1e39}`, 400,
		"json: cannot unmarshal number 1e39 into Go struct field CompletionRequest.frequency_penalty of type float32"},
	{broker.KindOpenAIResponses, `{"model":"tiny-a","input":5}`, 400,
		"input must be a string or array: json: cannot unmarshal number into Go value of type []json.RawMessage"},
	{broker.KindOpenAIResponses, `{"model":"tiny-a","input":"hi","text":"json"}`, 400,
		"json: cannot unmarshal string into Go struct field ResponsesRequest.text of type openai.ResponsesText"},
	{broker.KindAnthropicMessages, `{"model":"tiny-a","max_tokens":"x",` + hiMessages + `}`, 400,
		"json: cannot unmarshal string into Go struct field MessagesRequest.max_tokens of type int"},
	{broker.KindAnthropicMessages, `{"model":"tiny-a","max_tokens":4,` + hiMessages + `,"thinking":true}`, 400,
		"json: cannot unmarshal bool into Go struct field MessagesRequest.thinking of type anthropic.ThinkingConfig"},
	{broker.KindOpenAIEmbeddings, `{"model":"tiny-a","input":"hi","dimensions":"x"}`, 400,
		"json: cannot unmarshal string into Go struct field EmbedRequest.dimensions of type int"},
	{broker.KindOpenAIEmbeddings, `{"model":"tiny-a","input":[],"encoding_format":5}`, 400,
		"json: cannot unmarshal number into Go struct field EmbedRequest.encoding_format of type string"},
	// A number literal a refusal quotes is clipped, as any value a client sent (ADR-0142).
	{broker.KindOpenAIChat, `{"model":"tiny-a",` + hiMessages + `,"seed":1` + strings.Repeat("0", 300) + `}`, 400,
		"json: cannot unmarshal number 1" + strings.Repeat("0", maxQuoted-1) + "… into Go struct field ChatCompletionRequest.seed of type int"},
	{broker.KindOpenAICompletion, `{"model":"tiny-a","prompt":"hi","temperature":-1` + strings.Repeat("0", 300) + `}`, 400,
		"json: cannot unmarshal number -1" + strings.Repeat("0", maxQuoted-2) + "… into Go struct field CompletionRequest.temperature of type float32"},
}

// POST /jobs refuses at submit what the sync route of its kind refuses before queueing,
// with the same status and words: the checks Ollama's layers and handlers make before
// they run anything (the OpenAI layer's messages, input and encoding_format, the
// Anthropic layer's max_tokens and messages, top_logprobs out of range, a stream that is
// no boolean, options of a wrong type or no object at all, any other member of a type
// Ollama's decoder refuses on chat and generate). Such a job was accepted 202 and failed later with
// Ollama's 400. The sync routes still refuse the same bodies, and neither queues a job
// nor calls the target.
func TestJobsSubmitMakesTheSyncRoutesChecks(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	for _, c := range syncRefusals {
		syncGot := post(t, ctx, b.URL, c.kind.Path(), []byte(c.body))
		if msg := refusalMessage(t, syncGot.Body); syncGot.Status != c.status || msg != c.want {
			t.Errorf("%s %s: %d %q, want %d %q", c.kind.Path(), c.body, syncGot.Status, msg, c.status, c.want)
		}
		job := `{"kind":"` + string(c.kind) + `",` + c.body[1:]
		got := post(t, ctx, b.URL, "/jobs", []byte(job))
		if msg := refusalMessage(t, got.Body); got.Status != c.status || msg != c.want {
			t.Errorf("POST /jobs %s: %d %q, want %d %q as %s answers", job, got.Status, msg, c.status, c.want, c.kind.Path())
		}
	}
	for _, call := range b.Fake.Calls() {
		if call.Method == http.MethodPost && call.Path != "/api/show" {
			t.Errorf("a refused request reached the target: %s %s", call.Path, call.Body)
		}
	}
	if jobs, _, err := b.Broker.Store.List(ctx, broker.ListOptions{}); err != nil || len(jobs) != 0 {
		t.Errorf("jobs after the refusals: %d, %v; want none", len(jobs), err)
	}
}

// A model the target lost after foreman's last poll of it is the target's 404, relayed
// in its words and framing: Ollama's (and the fake's) "model 'x' not found" on chat, as
// an api_error on /v1, as a not_found_error on /v1/messages.
func TestTargetsModelNotFoundIsRelayedInItsWords(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	if !b.Inv.HasModel("tiny-b") {
		t.Fatal("the inventory does not list tiny-b; the test proves nothing")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, b.Fake.URL+"/api/delete", strings.NewReader(`{"model":"tiny-b"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("delete tiny-b at the target: %v %v", resp, err)
	}
	resp.Body.Close()
	reqID := regexp.MustCompile(`"req_[0-9a-f]{24}"`)
	for _, c := range []struct{ path, body, ctype, want string }{
		{"/api/chat", `{"model":"tiny-b","messages":[{"role":"user","content":"x"}]}`, "application/json; charset=utf-8",
			`{"error":"model 'tiny-b' not found"}`},
		{"/v1/chat/completions", `{"model":"tiny-b","messages":[{"role":"user","content":"x"}]}`, "application/json",
			`{"error":{"message":"model 'tiny-b' not found","type":"api_error","param":null,"code":null}}` + "\n"},
		{"/v1/messages", `{"model":"tiny-b","max_tokens":4,"messages":[{"role":"user","content":"x"}]}`, "application/json",
			`{"type":"error","error":{"type":"not_found_error","message":"model 'tiny-b' not found"},"request_id":"req_ID"}` + "\n"},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		body := reqID.ReplaceAllString(string(got.Body), `"req_ID"`)
		if got.Status != http.StatusNotFound || got.CType != c.ctype || body != c.want {
			t.Errorf("%s %s: %d %q %q\nwant 404 %q %q", c.path, c.body, got.Status, got.CType, body, c.ctype, c.want)
		}
	}
}

// Ollama's embedding (and image) requests have no "stream": a value that is no boolean
// is ignored there (measured: /api/embed answers 200), so foreman takes it too, on the
// sync route and at POST /jobs.
func TestStreamOfNoBooleanIsIgnoredWhereOllamaHasNone(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	for _, c := range []struct {
		kind broker.Kind
		body string
	}{
		{broker.KindEmbed, `{"model":"tiny-a","input":"hi","stream":"yes"}`}, // queued: a chat model (ADR-0053)
		{broker.KindOpenAIEmbeddings, `{"model":"tiny-a","input":"hi","stream":"yes"}`},
	} {
		if got := post(t, ctx, b.URL, c.kind.Path(), []byte(c.body)); got.Status != http.StatusOK {
			t.Errorf("%s %s: %d %s, want 200 as Ollama answers", c.kind.Path(), c.body, got.Status, got.Body)
		}
		job := `{"kind":"` + string(c.kind) + `",` + c.body[1:]
		if got := post(t, ctx, b.URL, "/jobs", []byte(job)); got.Status != http.StatusAccepted {
			t.Errorf("POST /jobs %s: %d %s, want 202", job, got.Status, got.Body)
		}
	}
}
