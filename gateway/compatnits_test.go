package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// An Anthropic error's request_id has the shape Ollama's anthropic.NewError gives it,
// "req_" and 24 lower-case hex digits, on a refusal and in a stream's error event alike:
// a client or log parser that reads Ollama's ids reads foreman's.
func TestAnthropicRequestIDAsOllama(t *testing.T) {
	t.Parallel()
	shape := regexp.MustCompile(`^req_[0-9a-f]{24}$`)
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	got := post(t, ctx, b.URL, "/v1/messages", []byte(`{"model":"nope","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`))
	var e struct {
		RequestID string `json:"request_id"`
	}
	if got.Status != http.StatusNotFound || json.Unmarshal(got.Body, &e) != nil || !shape.MatchString(e.RequestID) {
		t.Errorf("refusal: %d %s, want a 404 whose request_id is req_ and 24 lower-case hex digits", got.Status, got.Body)
	}
	ev := string(sseErrorEvent(broker.KindAnthropicMessages, "boom", 0))
	data, ok := strings.CutPrefix(strings.TrimSpace(ev), "event: error\ndata: ")
	if !ok || json.Unmarshal([]byte(data), &e) != nil || !shape.MatchString(e.RequestID) {
		t.Errorf("error event %q: want a request_id of req_ and 24 lower-case hex digits", ev)
	}
	if a, b := anthropicRequestID(), anthropicRequestID(); a == b {
		t.Errorf("two request ids alike: %s", a)
	}
}

// A streamed call on the Responses and Messages routes is answered with the headers
// Ollama's middleware for them sets before its chat handler runs, Connection:
// keep-alive among them: on its events, and on the error of a call refused or failed
// behind that middleware (a model not found, a model that cannot chat, a runner's
// failure), not on a refusal of the middleware itself (an input it cannot read, no
// model).
func TestStreamedResponsesAndMessagesHeadersAsOllama(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	const (
		rsp = `{"model":"%s","input":"tell me","max_output_tokens":6,"stream":true}`
		msg = `{"model":"%s","max_tokens":6,"messages":[{"role":"user","content":"tell me"}],"stream":true}`
	)
	for _, c := range []struct {
		path, body string
		fail       *ollamatest.Failure
		status     int
		headers    bool // the target's answer has the stream headers
	}{
		{"/v1/responses", fmt.Sprintf(rsp, "tiny-a"), nil, 200, true},
		{"/v1/messages", fmt.Sprintf(msg, "tiny-a"), nil, 200, true},
		{"/v1/responses", fmt.Sprintf(rsp, "tiny-embed"), nil, 400, true},
		{"/v1/messages", fmt.Sprintf(msg, "tiny-embed"), nil, 400, true},
		{"/v1/responses", fmt.Sprintf(rsp, "tiny-a"), &ollamatest.Fail500, 500, true},
		{"/v1/messages", fmt.Sprintf(msg, "tiny-a"), &ollamatest.Fail500, 500, true},
		{"/v1/responses", `{"model":"tiny-a","input":5,"stream":true}`, nil, 400, false},
		{"/v1/responses", fmt.Sprintf(rsp, "nope"), nil, 404, true},
		{"/v1/messages", fmt.Sprintf(msg, "nope"), nil, 404, true},
		{"/v1/messages", `{"max_tokens":6,"messages":[{"role":"user","content":"x"}],"stream":true}`, nil, 400, false},
	} {
		answer := func(url string) rawResponse {
			if c.fail != nil {
				b.Fake.FailNext(1, *c.fail)
			}
			return post(t, ctx, url, c.path, []byte(c.body))
		}
		want := answer(b.Fake.URL)
		if want.Status != c.status || (want.Header.Get("Connection") == "keep-alive") != c.headers ||
			(want.Header.Get("Cache-Control") == "no-cache") != c.headers {
			t.Fatalf("%s %s: the fake answered %d %v, want %d, stream headers %v", c.path, c.body, want.Status, want.Header, c.status, c.headers)
		}
		got := answer(b.URL)
		for _, h := range []string{"Content-Type", "Cache-Control", "Connection"} {
			if got.Status != want.Status || got.Header.Get(h) != want.Header.Get(h) {
				t.Errorf("%s %s: %d %s %q, the target's %d %q", c.path, c.body, got.Status, h, got.Header.Get(h), want.Status, want.Header.Get(h))
			}
		}
	}
}

// A body of null is answered as Ollama answers it: its router decodes a body into the
// handler's struct, which null leaves empty, so each route answers null as it answers
// {} (v0.17.4): the generate routes with their 404 for a model not found, the others
// with their model check, the OpenAI layer with its checks of messages and input before
// that (which an object without them meets too), and a management route's body goes on
// to the target. [] and other values stay foreman's 400.
func TestNullBodyAsOllama(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	const gin, enc = "application/json; charset=utf-8", "application/json"
	oai := func(typ, msg string) string {
		return `{"error":{"message":` + strconv.Quote(msg) + `,"type":"` + typ + `","param":null,"code":null}}`
	}
	reqID := regexp.MustCompile(`"req_[0-9a-f]{24}"`)
	for _, c := range []struct {
		path, body string
		status     int
		ctype      string
		want       string
	}{
		{"/api/generate", `null`, 404, gin, `{"error":"model '' not found"}`},
		{"/api/generate", " null\n", 404, gin, `{"error":"model '' not found"}`},
		// Ollama reads the first value: null with more after it is null, and only JSON's
		// white space may come before it.
		{"/api/generate", "null x", 404, gin, `{"error":"model '' not found"}`},
		{"/api/generate", "null}", 404, gin, `{"error":"model '' not found"}`},
		{"/api/chat", "null\x00", 400, gin, `{"error":"model is required"}`},
		{"/v1/completions", "null{}", 404, enc, oai("api_error", "model '' not found") + "\n"},
		{"/api/generate", "\vnull", 400, gin, `{"error":"invalid JSON body: invalid character '\\v' looking for beginning of value"}`},
		{"/api/generate", "\u00a0null", 400, gin, `{"error":"invalid JSON body: invalid character 'Â' looking for beginning of value"}`},
		{"/v1/completions", "\fnull", 400, gin, oai("invalid_request_error", "invalid JSON body: invalid character '\\f' looking for beginning of value")},
		{"/api/chat", `null`, 400, gin, `{"error":"model is required"}`},
		{"/api/embed", `null`, 400, gin, `{"error":"model is required"}`},
		{"/api/embeddings", `null`, 400, gin, `{"error":"model is required"}`},
		{"/api/show", `null`, 400, gin, `{"error":"model is required"}`},
		{"/v1/completions", `null`, 404, enc, oai("api_error", "model '' not found") + "\n"},
		{"/v1/chat/completions", `null`, 400, gin, oai("invalid_request_error", "[] is too short - 'messages'")},
		{"/v1/chat/completions", `{}`, 400, gin, oai("invalid_request_error", "[] is too short - 'messages'")},
		{"/v1/chat/completions", `{"model":"nope","messages":[]}`, 400, gin, oai("invalid_request_error", "[] is too short - 'messages'")},
		{"/v1/embeddings", `null`, 400, gin, oai("invalid_request_error", "invalid input")},
		{"/v1/embeddings", `{"model":"nope","input":[]}`, 400, gin, oai("invalid_request_error", "invalid input")},
		{"/v1/responses", `null`, 400, enc, oai("api_error", "model is required") + "\n"},
		{"/v1/messages", `null`, 400, gin, `{"type":"error","error":{"type":"invalid_request_error","message":"model is required"},"request_id":"req_ID"}`},
		{"/v1/chat/completions", "null x", 400, gin, oai("invalid_request_error", "[] is too short - 'messages'")},
		{"/v1/embeddings", "null]", 400, gin, oai("invalid_request_error", "invalid input")},
		{"/v1/responses", "null x", 400, enc, oai("api_error", "model is required") + "\n"},
		{"/v1/messages", "null x", 400, gin, `{"type":"error","error":{"type":"invalid_request_error","message":"model is required"},"request_id":"req_ID"}`},
		{"/api/show", "null x", 400, gin, `{"error":"model is required"}`},
		{"/api/embed", "null x", 400, gin, `{"error":"model is required"}`},
		{"/v1/images/generations", `null`, 400, gin, oai("invalid_request_error", "prompt is required")},
		{"/v1/images/edits", "null x", 400, gin, oai("invalid_request_error", "prompt is required")},
		{"/api/chat", `[]`, 400, gin, `{"error":"invalid JSON body: json: cannot unmarshal array into Go value of type map[string]json.RawMessage"}`},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		body := reqID.ReplaceAllString(string(got.Body), `"req_ID"`)
		if got.Status != c.status || got.CType != c.ctype || body != c.want {
			t.Errorf("%s %q: %d %q %q\nwant %d %q %q", c.path, c.body, got.Status, got.CType, body, c.status, c.ctype, c.want)
		}
	}
	// A management route's null goes on to the target, which answers it.
	for _, path := range []string{"/api/pull", "/api/copy", "/api/experimental/aliases"} {
		for _, body := range []string{`null`, `null x`} {
			got, want := post(t, ctx, b.URL, path, []byte(body)), post(t, ctx, b.Fake.URL, path, []byte(body))
			if got.Status != want.Status || got.CType != want.CType || !bytes.Equal(got.Body, want.Body) {
				t.Errorf("%s %q: %d %q %s, the target's %d %q %s", path, body, got.Status, got.CType, got.Body, want.Status, want.CType, want.Body)
			}
		}
	}
	if n, _ := b.Broker.Store.QueueLen(ctx); n != 0 {
		t.Errorf("refused bodies queued %d jobs", n)
	}
}

// A "stream" member given twice, null last, streams as Ollama's request type of the route
// reads it: the OpenAI chat and completions and the Anthropic types hold a bool, which
// the null leaves true; the native and Responses types a *bool, which it sets back to
// absent (the native routes' default is to stream, the Responses' not).
func TestStreamNullAfterTrueAsOllama(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	const msgs = `"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"input":"hi"`
	for _, c := range []struct {
		path, stream, ctype string
	}{
		{"/v1/chat/completions", `"stream":true,"stream":null`, "text/event-stream"},
		{"/v1/completions", `"prompt":"hi","stream":true,"stream":null`, "text/event-stream"},
		{"/v1/messages", `"stream":true,"stream":null`, "text/event-stream"},
		{"/v1/chat/completions", `"stream":null,"stream":false`, "application/json"},
		{"/v1/responses", `"stream":true,"stream":null`, "application/json"},
		{"/api/chat", `"stream":false,"stream":null`, "application/x-ndjson"},
	} {
		body := []byte("{" + msgs + "," + c.stream + "}")
		got, want := post(t, ctx, b.URL, c.path, body), post(t, ctx, b.Fake.URL, c.path, body)
		if got.Status != http.StatusOK || !strings.HasPrefix(got.CType, c.ctype) || !strings.HasPrefix(want.CType, c.ctype) {
			t.Errorf("%s %s: %d %q, the target's %d %q; want 200 %s", c.path, c.stream, got.Status, got.CType, want.Status, want.CType, c.ctype)
		}
	}
}
