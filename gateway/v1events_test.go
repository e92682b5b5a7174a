package gateway

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// /v1/messages answers in Anthropic's error shape, a 401 included, and takes the key
// Anthropic's SDKs send (X-Api-Key) as the bearer token; /v1/responses answers in
// OpenAI's.
func TestAnthropicAndResponsesRoutesRefuseInTheirShape(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) { c.AuthToken = "s3cret" }))
	b.Token = ""
	anthropic := func(name string, resp *http.Response, out []byte, status int, typ, msg string) {
		t.Helper()
		var id struct {
			RequestID string `json:"request_id"`
		}
		gotType, gotMsg := errorShape(t, out)
		if resp.StatusCode != status || json.Unmarshal(out, &id) != nil || gotType != "error/"+typ ||
			!strings.HasPrefix(gotMsg, msg) || !strings.HasPrefix(id.RequestID, "req_") {
			t.Errorf("%s: %d %s, want %d {type:error, error:{type:%s, message:%s...}, request_id:req_...}", name, resp.StatusCode, out, status, typ, msg)
		}
	}
	body := []byte(`{"model":"nope","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`)
	resp, out := b.request(t, http.MethodPost, "/v1/messages", body)
	anthropic("no key", resp, out, 401, "authentication_error", "unauthorized")
	resp, out = b.request(t, http.MethodPost, "/v1/messages", body, "X-Api-Key", "wrong")
	anthropic("wrong key", resp, out, 401, "authentication_error", "unauthorized")
	resp, out = b.request(t, http.MethodPost, "/v1/messages", body, "X-Api-Key", "s3cret")
	anthropic("unknown model", resp, out, 404, "not_found_error", "model 'nope' not found")
	resp, out = b.request(t, http.MethodPost, "/v1/messages", []byte(`{"model":"tiny-a:","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`), "Authorization", "Bearer s3cret")
	anthropic("unparsable model", resp, out, 400, "invalid_request_error", "model is required")

	resp, out = b.request(t, http.MethodPost, "/v1/responses", []byte(`{"model":"nope","input":"hi"}`), "Authorization", "Bearer s3cret")
	var oe struct {
		Error struct {
			Message string `json:"message"`
			Type    string `json:"type"`
		} `json:"error"`
	}
	if resp.StatusCode != 404 || json.Unmarshal(out, &oe) != nil || oe.Error.Message != "model 'nope' not found" || oe.Error.Type != "api_error" {
		t.Errorf("/v1/responses unknown model: %d %s", resp.StatusCode, out)
	}
}

// A failure after the stream began is an error event in the stream's own dialect, and
// the Anthropic one is read as an error as any in-stream error is (ollama.FrameError).
func TestSSEErrorEventPerDialect(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		kind       broker.Kind
		event, typ string
	}{
		{broker.KindAnthropicMessages, "event: error\ndata: ", `"type":"error","error":{"type":"api_error","message":"boom"}`},
		{broker.KindOpenAIResponses, "event: error\ndata: ", `{"type":"error","code":"api_error","message":"boom","param":null,"sequence_number":7}`},
		{broker.KindOpenAIChat, "data: ", `{"error":{"message":"boom","type":"api_error"}}`},
	} {
		got := string(sseErrorEvent(c.kind, "boom", 7))
		if !strings.HasPrefix(got, c.event) || !strings.Contains(got, c.typ) || !strings.HasSuffix(got, "\n\n") {
			t.Errorf("%s: %q", c.kind, got)
		}
		if c.kind != broker.KindOpenAIResponses && ollama.FrameError(ollama.ContentTypeSSE, []byte(got)) != "boom" {
			t.Errorf("%s: FrameError does not read %q", c.kind, got)
		}
	}
}

// A zstd-compressed Responses body ("Content-Encoding: zstd", which Ollama's route takes)
// is decoded: its model is read, and the job carries the JSON. A body that inflates
// past the body limit is a 413, one that is not zstd a 400.
func TestResponsesTakeAZstdBody(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) { c.MaxBodyBytes = 64 << 10 }))
	compress := func(raw []byte) []byte {
		enc, err := zstd.NewWriter(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer enc.Close()
		return enc.EncodeAll(raw, nil)
	}
	resp, out := b.request(t, http.MethodPost, "/v1/responses", compress([]byte(`{"model":"nope","input":"hi"}`)), "Content-Encoding", "zstd")
	if resp.StatusCode != 404 || !strings.Contains(string(out), "model 'nope' not found") {
		t.Errorf("compressed body: %d %s, want the unknown model's 404", resp.StatusCode, out)
	}
	bomb := compress([]byte(`{"model":"tiny-a","input":"` + strings.Repeat("x", 1<<20) + `"}`))
	if len(bomb) > 64<<10 {
		t.Fatalf("the bomb is %d bytes compressed", len(bomb))
	}
	resp, out = b.request(t, http.MethodPost, "/v1/responses", bomb, "Content-Encoding", "zstd")
	if resp.StatusCode != 413 {
		t.Errorf("inflating past the limit: %d %s, want 413", resp.StatusCode, out)
	}
	// Two frames, each within the limit, inflating past it together: what is bounded is
	// the body, not a frame.
	twoFrames := append(compress([]byte(`{"model":"tiny-a","input":"`+strings.Repeat("x", 40<<10))),
		compress([]byte(strings.Repeat("y", 40<<10)+`"}`))...)
	resp, out = b.request(t, http.MethodPost, "/v1/responses", twoFrames, "Content-Encoding", "zstd")
	if resp.StatusCode != 413 || !strings.Contains(string(out), "request body too large") {
		t.Errorf("two frames inflating past the limit: %d %s, want 413", resp.StatusCode, out)
	}
	// A small body in a frame that asks for a window (history) past the limit, 1 MiB: a
	// frame header, then the body as one raw block. The 413 says so rather than calling
	// the body large.
	small := []byte(`{"model":"tiny-a","input":"hi"}`)
	block := 1 | len(small)<<3 // last block, raw, its size
	wide := bytes.NewBuffer([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, (20 - 10) << 3, byte(block), byte(block >> 8), byte(block >> 16)})
	wide.Write(small)
	resp, out = b.request(t, http.MethodPost, "/v1/responses", wide.Bytes(), "Content-Encoding", "zstd")
	if resp.StatusCode != 413 || !strings.Contains(string(out), "compress it with a smaller window") {
		t.Errorf("a window past the limit: %d %s, want a 413 that names the window", resp.StatusCode, out)
	}
	// Not zstd: the decoder's error, as Ollama's JSON binding passes it on.
	resp, out = b.request(t, http.MethodPost, "/v1/responses", []byte(`{"model":"tiny-a","input":"hi"}`), "Content-Encoding", "zstd")
	if resp.StatusCode != 400 || !strings.Contains(string(out), `"invalid input: magic number mismatch"`) {
		t.Errorf("not zstd: %d %s, want 400", resp.StatusCode, out)
	}
	// Ollama decodes a body whose Content-Encoding is "zstd" exactly; any other spelling
	// leaves the body as it came.
	resp, out = b.request(t, http.MethodPost, "/v1/responses", []byte(`{"model":"nope","input":"hi"}`), "Content-Encoding", "ZSTD")
	if resp.StatusCode != 404 || !strings.Contains(string(out), "model 'nope' not found") {
		t.Errorf("a plain body said ZSTD: %d %s, want the unknown model's 404", resp.StatusCode, out)
	}
	resp, out = b.request(t, http.MethodPost, "/v1/responses", compress([]byte(`{"model":"tiny-a","input":"hi"}`)), "Content-Encoding", "Zstd")
	if resp.StatusCode != 400 || !strings.Contains(string(out), "invalid character '(' looking for beginning of value") {
		t.Errorf("a compressed body said Zstd: %d %s, want 400", resp.StatusCode, out)
	}
	if n, _ := b.Broker.Store.QueueLen(testCtx(t, 5*time.Second)); n != 0 {
		t.Errorf("refused bodies queued %d jobs", n)
	}
}

// Through foreman the Responses and Messages routes answer as the target does, streamed
// or not, and a streamed job's stored result is the non-streamed answer.
func TestQueuedResponsesAndMessagesRelayed(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	for _, rt := range []struct {
		path, body string
		text       func(t *testing.T, answer []byte) string
	}{
		{"/v1/responses", `{"model":"tiny-a","input":"tell me","max_output_tokens":6%s}`, responseText},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":6,"messages":[{"role":"user","content":"tell me"}]%s}`, messageText},
	} {
		plain := []byte(strings.Replace(rt.body, "%s", "", 1))
		streamed := []byte(strings.Replace(rt.body, "%s", `,"stream":true`, 1))
		for _, body := range [][]byte{plain, streamed} {
			got, want := post(t, ctx, b.URL, rt.path, body), post(t, ctx, b.Fake.URL, rt.path, body)
			if got.Status != 200 || got.CType != want.CType || !bytes.Equal(got.Body, want.Body) {
				t.Errorf("%s %s: got %d %q\n%s\nwant %d %q\n%s", rt.path, body, got.Status, got.CType, got.Body, want.Status, want.CType, want.Body)
			}
			if g, w := got.Header.Get("Cache-Control"), want.Header.Get("Cache-Control"); g != w {
				t.Errorf("%s %s: Cache-Control %q, the target's %q", rt.path, body, g, w)
			}
			res := jobResult(t, ctx, b.Broker.Store, got.Header.Get(HeaderJobID))
			direct := post(t, ctx, b.Fake.URL, rt.path, plain).Body
			if rt.text(t, res) != rt.text(t, direct) || !slices.Equal(topKeys(t, res), topKeys(t, direct)) {
				t.Errorf("%s %s: stored result %s, the non-streamed answer %s", rt.path, body, res, direct)
			}
		}
	}
}

// A stream the target cuts off mid-way ends, for an Anthropic client, with an Anthropic
// error event it can read.
func TestQueuedMessagesCutOffEndsWithAnErrorEvent(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	b.Fake.FailNext(1, ollamatest.DropMidStream)
	got := post(t, ctx, b.URL, "/v1/messages", []byte(`{"model":"tiny-a","max_tokens":6,"stream":true,"messages":[{"role":"user","content":"cut"}]}`))
	events := eventTypes(got.Body)
	if got.Status != 200 || len(events) < 2 || events[0] != "message_start" || events[len(events)-1] != "error" {
		t.Fatalf("%d events %v:\n%s", got.Status, events, got.Body)
	}
	last := got.Body[bytes.LastIndex(got.Body, []byte("data: "))+len("data: "):]
	if typ, msg := errorShape(t, bytes.TrimSpace(last)); typ != "error/api_error" || msg == "" {
		t.Errorf("last event's data %s: (%s, %q)", last, typ, msg)
	}
}

// The error event that ends a Responses stream cut short is numbered after the events
// before it: OpenAI's error event has a sequence_number as every event of the stream
// does, and its SDKs' event types require one.
func TestResponsesStreamErrorEventIsNumbered(t *testing.T) {
	t.Parallel()
	sse := []string{broker.HeaderContentType, "text/event-stream"}
	o, w := runSyncCase(t, syncCase{kind: broker.KindOpenAIResponses, stream: true, msgs: []*nats.Msg{
		streamMsg(1, "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0}\n\n", sse...),
		streamMsg(2, "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"a\",\"sequence_number\":4}\n\n"+
			"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"b\",\"sequence_number\":5}\n\n", sse...),
		finalMsg(3, "failed", broker.HeaderError, "runner died"),
	}})
	if o != outcomeError {
		t.Fatalf("outcome %v, body %q", o, w.Body)
	}
	events := strings.Split(strings.TrimSpace(w.Body.String()), "\n\n")
	last := events[len(events)-1]
	data, ok := strings.CutPrefix(last, "event: error\ndata: ")
	var ev struct {
		Type           string `json:"type"`
		Message        string `json:"message"`
		SequenceNumber *int64 `json:"sequence_number"`
	}
	if !ok || json.Unmarshal([]byte(data), &ev) != nil || ev.Type != "error" || ev.Message != "runner died" {
		t.Fatalf("last event %q, want an error event saying runner died", last)
	}
	if ev.SequenceNumber == nil || *ev.SequenceNumber != 6 {
		t.Errorf("error event %s: want sequence_number 6, after the delta numbered 5", data)
	}
}

// The error event's number follows the last one written, wherever that was: a large event
// that went out in pieces (its data line begins in the first, the last holds only its
// end), or an event followed by a frame without data (a comment) both end the stream
// written so far without a number in its last message.
func TestResponsesStreamErrorEventIsNumberedAfterPiecesAndComments(t *testing.T) {
	t.Parallel()
	sse := []string{broker.HeaderContentType, "text/event-stream"}
	created := "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0}\n\n"
	for name, msgs := range map[string][]*nats.Msg{
		"pieces": {
			streamMsg(1, created, sse...),
			streamMsg(2, "event: response.output_text.done\ndata: {\"content_index\":0,\"sequence_number\":7,\"text\":\"aaaa", broker.HeaderMore, "1"),
			streamMsg(3, "aaaa\",\"type\":\"response.output_text.done\"}\n\n"),
			finalMsg(4, "failed", broker.HeaderError, "runner died"),
		},
		"comment": {
			streamMsg(1, created, sse...),
			streamMsg(2, "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"a\",\"sequence_number\":7}\n\n"),
			streamMsg(3, ": keep-alive\n\n"),
			finalMsg(4, "failed", broker.HeaderError, "runner died"),
		},
	} {
		o, w := runSyncCase(t, syncCase{kind: broker.KindOpenAIResponses, stream: true, msgs: msgs})
		if o != outcomeError {
			t.Fatalf("%s: outcome %v, body %q", name, o, w.Body)
		}
		events := strings.Split(strings.TrimSpace(w.Body.String()), "\n\n")
		data, ok := strings.CutPrefix(events[len(events)-1], "event: error\ndata: ")
		var ev struct {
			SequenceNumber *int64 `json:"sequence_number"`
		}
		if !ok || json.Unmarshal([]byte(data), &ev) != nil || ev.SequenceNumber == nil || *ev.SequenceNumber != 8 {
			t.Errorf("%s: last event %q, want an error event numbered 8, after the event numbered 7", name, events[len(events)-1])
		}
	}
}
