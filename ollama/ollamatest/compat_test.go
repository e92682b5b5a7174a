package ollamatest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// Tests of the OpenAI Responses (/v1/responses) and Anthropic Messages (/v1/messages)
// routes.

type answer struct {
	code   int
	header http.Header
	body   string
}

// post sends body to base+path; err is the transport's (a dropped connection).
func post(ctx context.Context, base, path, body string) (answer, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", base+path, strings.NewReader(body))
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(b)}, err
}

func mustPost(t *testing.T, ctx context.Context, base, path, body string) answer {
	t.Helper()
	a, err := post(ctx, base, path, body)
	if err != nil {
		t.Fatalf("POST %s %s: %v", path, body, err)
	}
	return a
}

type sseEvent struct{ name, data string }

// events splits an SSE body framed as Ollama's writeSSE frames it: "event: name\ndata: json\n\n".
func events(t *testing.T, body string) []sseEvent {
	t.Helper()
	if !strings.HasSuffix(body, "\n\n") {
		t.Fatalf("stream does not end with a blank line: %q", body)
	}
	var out []sseEvent
	for _, f := range strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n") {
		name, data, ok := strings.Cut(f, "\ndata: ")
		if !ok || !strings.HasPrefix(name, "event: ") || strings.Contains(data, "\n") || !json.Valid([]byte(data)) {
			t.Fatalf("bad SSE frame %q", f)
		}
		out = append(out, sseEvent{strings.TrimPrefix(name, "event: "), data})
	}
	return out
}

func eventNames(evs []sseEvent) []string {
	var names []string
	for _, e := range evs {
		names = append(names, e.name)
	}
	return names
}

func TestResponsesNonStream(t *testing.T) {
	t.Parallel()
	s := ollamatest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := mustPost(t, ctx, s.URL, "/v1/responses", `{"model":"tiny-a","input":"hi","max_output_tokens":4,"temperature":0}`)
	text := strings.Join(ollamatest.Reply("tiny-a:latest", "user: hi\n", 4), "")
	created := ollamatest.FixedTime.Unix()
	want := fmt.Sprintf(`{"id":"resp_ID","object":"response","created_at":%d,"completed_at":%d,"status":"completed","incomplete_details":null,"model":"tiny-a","previous_response_id":null,"instructions":null,`+
		`"output":[{"id":"msg_ID","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":%q,"annotations":[],"logprobs":[]}]}],`+
		`"error":null,"tools":[],"tool_choice":"auto","truncation":"disabled","parallel_tool_calls":true,"text":{"format":{"type":"text"}},"top_p":1,"presence_penalty":0,"frequency_penalty":0,"top_logprobs":0,"temperature":0,"reasoning":null,`+
		`"usage":{"input_tokens":2,"output_tokens":4,"total_tokens":6,"input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":0}},"max_output_tokens":4,"max_tool_calls":null,"store":false,"background":false,"service_tier":"default","metadata":{},"safety_identifier":null,"prompt_cache_key":null}`+"\n",
		created, created, text)
	got := regexp.MustCompile(`"(resp|msg)_\d+"`).ReplaceAllString(a.body, `"${1}_ID"`)
	if a.code != 200 || a.header.Get("Content-Type") != "application/json" || got != want {
		t.Fatalf("%d %s\n%s\nwant\n%s", a.code, a.header.Get("Content-Type"), a.body, want)
	}
	// The same chat as /api/chat, the same reply; ids are deterministic.
	again := mustPost(t, ctx, s.URL, "/v1/responses", `{"model":"tiny-a","input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]}],"max_output_tokens":4,"temperature":0}`)
	if again.body != a.body {
		t.Errorf("input as items answered\n%s\nnot\n%s", again.body, a.body)
	}
	// Instructions come first, as a system message; without max_output_tokens the reply has Config.Tokens.
	b := mustPost(t, ctx, s.URL, "/v1/responses", `{"model":"tiny-b","instructions":"be brief","input":"hi"}`)
	var r struct {
		Instructions string `json:"instructions"`
		Output       []struct {
			Content []struct{ Text string } `json:"content"`
		} `json:"output"`
		Usage struct {
			InputTokens  int `json:"input_tokens"`
			OutputTokens int `json:"output_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal([]byte(b.body), &r); err != nil || r.Instructions != "be brief" || r.Usage.OutputTokens != 5 || r.Usage.InputTokens != 5 ||
		r.Output[0].Content[0].Text != strings.Join(ollamatest.Reply("tiny-b:latest", "system: be brief\nuser: hi\n", 5), "") {
		t.Errorf("%v %s", err, b.body)
	}
}

func TestResponsesStream(t *testing.T) {
	t.Parallel()
	s := ollamatest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := mustPost(t, ctx, s.URL, "/v1/responses", `{"model":"tiny-a","input":"hi","max_output_tokens":2,"stream":true}`)
	if a.code != 200 || a.header.Get("Content-Type") != "text/event-stream" || a.header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("%d %v %s", a.code, a.header, a.body)
	}
	evs := events(t, a.body)
	want := []string{"response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
		"response.output_text.delta", "response.output_text.delta", "response.output_text.done", "response.content_part.done",
		"response.output_item.done", "response.completed"}
	if fmt.Sprint(eventNames(evs)) != fmt.Sprint(want) {
		t.Fatalf("events %v\nwant %v", eventNames(evs), want)
	}
	toks := ollamatest.Reply("tiny-a:latest", "user: hi\n", 2)
	for i, e := range evs {
		var d struct {
			Type     string `json:"type"`
			Sequence int    `json:"sequence_number"`
			Delta    string `json:"delta"`
			Text     string `json:"text"`
		}
		if err := json.Unmarshal([]byte(e.data), &d); err != nil || d.Type != e.name || d.Sequence != i {
			t.Errorf("event %d: %v %s", i, err, e.data)
		}
		if e.name == "response.output_text.delta" && d.Delta != toks[i-4] || e.name == "response.output_text.done" && d.Text != strings.Join(toks, "") {
			t.Errorf("event %d: %s", i, e.data)
		}
	}
	// Members come sorted, as Ollama marshals its maps.
	if !strings.HasPrefix(evs[4].data, `{"content_index":0,"delta":"`+toks[0]+`","item_id":"msg_`) ||
		!strings.HasPrefix(evs[0].data, `{"response":{"background":false,"completed_at":null,"created_at":`) ||
		!strings.Contains(evs[9].data, `"status":"completed"`) || !strings.Contains(evs[9].data, `"usage":{"input_tokens":2,"input_tokens_details":{"cached_tokens":0},"output_tokens":2,`) {
		t.Errorf("frames %q", evs)
	}
	// Without input the chat only loads the model.
	a = mustPost(t, ctx, s.URL, "/v1/responses", `{"model":"tiny-b","stream":true}`)
	if evs := events(t, a.body); fmt.Sprint(eventNames(evs)) != "[response.created response.in_progress response.completed]" || !strings.Contains(evs[2].data, `"output":null`) {
		t.Errorf("load only: %q", a.body)
	}
	if s.LoadedModel() != "tiny-b:latest" {
		t.Errorf("loaded %q", s.LoadedModel())
	}
}

func TestMessagesNonStream(t *testing.T) {
	t.Parallel()
	s := ollamatest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := mustPost(t, ctx, s.URL, "/v1/messages", `{"model":"tiny-a","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`)
	text := strings.Join(ollamatest.Reply("tiny-a:latest", "user: hi\n", 4), "")
	want := fmt.Sprintf(`{"id":"msg_ID","type":"message","role":"assistant","model":"tiny-a","content":[{"type":"text","text":%q}],"stop_reason":"end_turn","usage":{"input_tokens":2,"output_tokens":4}}`+"\n", text)
	got := regexp.MustCompile(`"msg_[0-9a-f]{24}"`).ReplaceAllString(a.body, `"msg_ID"`)
	if a.code != 200 || a.header.Get("Content-Type") != "application/json" || got != want {
		t.Fatalf("%d %s\n%s\nwant\n%s", a.code, a.header.Get("Content-Type"), a.body, want)
	}
	// System prompt and text blocks make the same chat as /api/chat reads it.
	b := mustPost(t, ctx, s.URL, "/v1/messages", `{"model":"tiny-a","max_tokens":3,"system":[{"type":"text","text":"be brief"}],"messages":[{"role":"User","content":[{"type":"text","text":"hi"}]}]}`)
	if !strings.Contains(b.body, `"text":`+mustJSON(strings.Join(ollamatest.Reply("tiny-a:latest", "system: be brief\nuser: hi\n", 3), ""))) {
		t.Errorf("%s", b.body)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestMessagesStream(t *testing.T) {
	t.Parallel()
	s := ollamatest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := mustPost(t, ctx, s.URL, "/v1/messages", `{"model":"tiny-a","max_tokens":2,"stream":true,"messages":[{"role":"user","content":"hello there"}]}`)
	if a.code != 200 || a.header.Get("Content-Type") != "text/event-stream" || a.header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("%d %v %s", a.code, a.header, a.body)
	}
	toks := ollamatest.Reply("tiny-a:latest", "user: hello there\n", 2)
	evs := events(t, a.body)
	id := regexp.MustCompile(`msg_[0-9a-f]{24}`).FindString(a.body)
	want := []sseEvent{
		{"message_start", `{"type":"message_start","message":{"id":"` + id + `","type":"message","role":"assistant","model":"tiny-a","content":[],"usage":{"input_tokens":3,"output_tokens":0}}}`},
		{"content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":` + mustJSON(toks[0]) + `}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":` + mustJSON(toks[1]) + `}}`},
		{"content_block_stop", `{"type":"content_block_stop","index":0}`},
		{"message_delta", `{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":3,"output_tokens":2}}`},
		{"message_stop", `{"type":"message_stop"}`},
	}
	if id == "" || fmt.Sprint(evs) != fmt.Sprint(want) {
		t.Fatalf("got  %q\nwant %q", evs, want)
	}
}

func TestCompatErrors(t *testing.T) {
	t.Parallel()
	s := ollamatest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const gin, enc = "application/json; charset=utf-8", "application/json"
	oai := func(typ, msg string) string {
		return `{"error":{"message":` + mustJSON(msg) + `,"type":"` + typ + `","param":null,"code":null}}`
	}
	ant := func(typ, msg string) string {
		return `{"type":"error","error":{"type":"` + typ + `","message":` + mustJSON(msg) + `},"request_id":"req_ID"}`
	}
	tests := []struct {
		path, body string
		code       int
		ctype      string
		want       string
	}{
		{"/v1/responses", `{"model":"nope","input":"hi"}`, 404, enc, oai("api_error", "model 'nope' not found") + "\n"},
		{"/v1/responses", `{"model":"nope","input":"hi","stream":true}`, 404, enc, oai("api_error", "model 'nope' not found") + "\n"},
		{"/v1/responses", `{"model":"tiny-embed","input":"hi"}`, 400, enc, oai("api_error", `"tiny-embed" does not support chat`) + "\n"},
		{"/v1/responses", `{"input":"hi"}`, 400, enc, oai("api_error", "model is required") + "\n"},
		{"/v1/responses", `{"model":"tiny-a","input":"hi"`, 400, gin, oai("invalid_request_error", "unexpected EOF")},
		{"/v1/responses", ``, 400, gin, oai("invalid_request_error", "EOF")},
		{"/v1/responses", `{"model":"tiny-a","input":5}`, 400, gin, oai("invalid_request_error", "input must be a string or array: json: cannot unmarshal number into Go value of type []json.RawMessage")},
		{"/v1/responses", `{"model":"tiny-a","input":[{"type":"zzz"}]}`, 400, gin, oai("invalid_request_error", "input[0]: unknown input item type: zzz")},
		{"/v1/responses", `{"model":"tiny-a","max_output_tokens":"x"}`, 400, gin, oai("invalid_request_error", "json: cannot unmarshal string into Go struct field ResponsesRequest.max_output_tokens of type int")},
		{"/v1/messages", `{"model":"nope","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`, 404, enc, ant("not_found_error", "model 'nope' not found") + "\n"},
		{"/v1/messages", `{"model":"tiny-embed","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`, 400, enc, ant("invalid_request_error", `"tiny-embed" does not support chat`) + "\n"},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":4`, 400, gin, ant("invalid_request_error", "unexpected EOF")},
		{"/v1/messages", `{"max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`, 400, gin, ant("invalid_request_error", "model is required")},
		{"/v1/messages", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`, 400, gin, ant("invalid_request_error", "max_tokens is required and must be positive")},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":-1,"messages":[{"role":"user","content":"hi"}]}`, 400, gin, ant("invalid_request_error", "max_tokens is required and must be positive")},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":4,"messages":[]}`, 400, gin, ant("invalid_request_error", "messages is required")},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":4,"messages":[{"role":"user","content":5}]}`, 400, gin, ant("invalid_request_error", "invalid message content type: float64")},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":4,"messages":[{"role":5}]}`, 400, gin, ant("invalid_request_error", "json: cannot unmarshal number into Go struct field MessageParam.messages.role of type string")},
	}
	reqID := regexp.MustCompile(`"req_[0-9a-f]{24}"`)
	for _, tt := range tests {
		a := mustPost(t, ctx, s.URL, tt.path, tt.body)
		got := reqID.ReplaceAllString(a.body, `"req_ID"`)
		if a.code != tt.code || a.header.Get("Content-Type") != tt.ctype || got != tt.want {
			t.Errorf("%s %s: %d %q %q\nwant %d %q %q", tt.path, tt.body, a.code, a.header.Get("Content-Type"), a.body, tt.code, tt.ctype, tt.want)
		}
	}
	for _, c := range s.Calls() {
		if c.Path == "/v1/messages" && strings.Contains(string(c.Body), `"model":"nope"`) && c.Model != "nope:latest" {
			t.Errorf("call recorded model %q", c.Model)
		}
	}
}

// Hold, WaitStarted, FailNext, SetDown, MaxTokens and the call records work on the two
// routes as on the others.
func TestCompatSteering(t *testing.T) {
	t.Parallel()
	s := ollamatest.New(t, ollamatest.WithMaxTokens(6))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rsp := `{"model":"tiny-a","input":"x","stream":true}`
	msg := `{"model":"tiny-a","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"x"}]}`

	release := s.Hold("tiny-a")
	var wg sync.WaitGroup
	got := make([]answer, 2)
	for i, req := range [][2]string{{"/v1/responses", rsp}, {"/v1/messages", msg}} {
		wg.Go(func() { got[i], _ = post(ctx, s.URL, req[0], req[1]) })
	}
	if err := s.WaitStarted(ctx, "tiny-a", 2); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitInFlight(ctx, 2); err != nil {
		t.Fatal(err)
	}
	release()
	wg.Wait()
	if evs := events(t, got[0].body); len(evs) != 13 || evs[12].name != "response.completed" {
		t.Errorf("held responses stream (5 tokens): %q", got[0].body)
	}
	if n := strings.Count(got[1].body, "event: content_block_delta\n"); n != 6 || !strings.HasSuffix(got[1].body, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n") {
		t.Errorf("held messages stream (max_tokens 50 capped at 6): %d deltas\n%s", n, got[1].body)
	}
	for _, c := range s.Calls() {
		if c.Model != "tiny-a:latest" || !c.Finished || c.Canceled {
			t.Errorf("call %s %q finished %v canceled %v", c.Path, c.Model, c.Finished, c.Canceled)
		}
	}

	// FailStatus answers in the route's error shape, as Ollama's middleware wraps its chat's errors.
	s.FailNext(2, ollamatest.FailStatus(503, "server busy"))
	a := mustPost(t, ctx, s.URL, "/v1/responses", rsp)
	if a.code != 503 || a.body != `{"error":{"message":"server busy","type":"api_error","param":null,"code":null}}`+"\n" {
		t.Errorf("FailStatus on responses: %d %s", a.code, a.body)
	}
	a = mustPost(t, ctx, s.URL, "/v1/messages", msg)
	if a.code != 503 || !strings.HasPrefix(a.body, `{"type":"error","error":{"type":"overloaded_error","message":"server busy"},"request_id":"req_`) {
		t.Errorf("FailStatus on messages: %d %s", a.code, a.body)
	}

	s.FailNext(2, ollamatest.DropMidStream)
	for _, req := range [][2]string{{"/v1/responses", rsp}, {"/v1/messages", msg}} {
		if a, err := post(ctx, s.URL, req[0], req[1]); err == nil {
			t.Errorf("DropMidStream on %s: %d %q", req[0], a.code, a.body)
		}
	}

	// A stream without its end: StreamError too, as Ollama drops the error its chat sends mid-stream.
	for _, f := range []ollamatest.Failure{ollamatest.StreamNoDone, ollamatest.StreamError("boom")} {
		s.FailNext(2, f)
		a := mustPost(t, ctx, s.URL, "/v1/responses", rsp)
		if evs := events(t, a.body); len(evs) != 9 || evs[8].name != "response.output_text.delta" {
			t.Errorf("%v on responses: %q", f, a.body)
		}
		a = mustPost(t, ctx, s.URL, "/v1/messages", msg)
		if evs := events(t, a.body); len(evs) != 8 || evs[7].name != "content_block_delta" {
			t.Errorf("%v on messages: %q", f, a.body)
		}
	}

	// Non-streamed, DropMidStream sends half the body.
	s.FailNext(1, ollamatest.DropMidStream)
	if a, err := post(ctx, s.URL, "/v1/messages", `{"model":"tiny-a","max_tokens":3,"messages":[{"role":"user","content":"x"}]}`); err == nil {
		t.Errorf("DropMidStream non-streamed: %d %q", a.code, a.body)
	}

	s.SetDown(true)
	if _, err := post(ctx, s.URL, "/v1/responses", rsp); err == nil {
		t.Error("SetDown: responses answered")
	}
	s.SetDown(false)

	// Pacing: the per-token hook (where TokenDelay sleeps) runs before each token.
	var paced atomic.Int32
	slow := ollamatest.New(t, ollamatest.WithBeforeToken(func(context.Context, int) error { paced.Add(1); return nil }))
	mustPost(t, ctx, slow.URL, "/v1/messages", `{"model":"tiny-a","max_tokens":3,"messages":[{"role":"user","content":"x"}]}`)
	if n := paced.Load(); n != 3 {
		t.Errorf("3 tokens paced %d times", n)
	}
}

// compatShape is a JSON value's shape: members in order, literal values except those that
// vary between runs or with the model's words.
func compatShape(t *testing.T, data string) string {
	t.Helper()
	vary := map[string]bool{"id": true, "item_id": true, "created_at": true, "completed_at": true, "text": true, "delta": true,
		"input_tokens": true, "output_tokens": true, "total_tokens": true, "request_id": true, "sequence_number": true,
		// The fake's replies end as its chats do, done_reason "stop"; a real model cut by max_tokens ends "max_tokens".
		"stop_reason": true}
	dec := json.NewDecoder(strings.NewReader(data))
	dec.UseNumber()
	var b strings.Builder
	var walk func(key string)
	walk = func(key string) {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("%v in %s", err, data)
		}
		switch v := tok.(type) {
		case json.Delim:
			end := map[json.Delim]string{'{': "}", '[': "]"}[v]
			b.WriteString(v.String())
			for dec.More() {
				k := key
				if v == '{' {
					kt, _ := dec.Token()
					k = kt.(string)
					b.WriteString(mustJSON(k) + ":")
				}
				walk(k)
				b.WriteString(",")
			}
			_, _ = dec.Token()
			b.WriteString(end)
		default:
			if vary[key] && v != nil {
				fmt.Fprintf(&b, "<%T>", v)
			} else {
				b.WriteString(mustJSON(v))
			}
		}
	}
	walk("")
	return b.String()
}

// compatAnswerShape is an answer's status, headers that matter and body shape; a stream's
// events collapse runs of the same shape (a real model's tokens are as many or fewer).
func compatAnswerShape(t *testing.T, a answer) string {
	t.Helper()
	out := fmt.Sprintf("%d %s cache=%q\n", a.code, a.header.Get("Content-Type"), a.header.Get("Cache-Control"))
	if a.header.Get("Content-Type") != "text/event-stream" || a.code != 200 {
		return out + compatShape(t, a.body) + fmt.Sprintf(" newline=%v", strings.HasSuffix(a.body, "\n"))
	}
	last := ""
	for _, e := range events(t, a.body) {
		line := e.name + " " + compatShape(t, e.data) + "\n"
		if line != last {
			out += line
		}
		last = line
	}
	return out
}

// The fake answers the two routes in the shapes of a real Ollama 0.17.4: member names and
// order, event names and sequence, headers, error bodies.
func TestCompatShapesMatchRealOllama(t *testing.T) {
	real := ollamatest.RealOllama(t)
	s := ollamatest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, tt := range []struct{ path, body string }{
		{"/v1/responses", `{"model":"tiny-a","input":"hi","max_output_tokens":4,"temperature":0}`},
		{"/v1/responses", `{"model":"tiny-a","input":"hi","max_output_tokens":4,"temperature":0,"stream":true}`},
		{"/v1/responses", `{"model":"tiny-a","instructions":"be brief","input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]}],"max_output_tokens":3,"temperature":0,"top_p":0.5,"truncation":"auto","reasoning":{"summary":"auto"},"text":{"format":{"type":"json_schema","name":"x","schema":{"type":"object"},"strict":true}},"stream":true}`},
		{"/v1/responses", `{"model":"tiny-a","instructions":"be brief","input":"hi","max_output_tokens":3,"temperature":0,"reasoning":{"effort":"low"},"text":{"format":{"type":"json_schema","name":"x","schema":{"type":"object"}}}}`},
		{"/v1/responses", `{"model":"tiny-b","stream":true}`},
		{"/v1/responses", `{"model":"tiny-b"}`},
		{"/v1/responses", `{"model":"nope","input":"hi","stream":true}`},
		{"/v1/responses", `{"model":"tiny-embed","input":"hi"}`},
		{"/v1/responses", `{"model":"tiny-a","input":[{"type":"zzz"}]}`},
		{"/v1/responses", `{"model":"tiny-a","input":"hi"`},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":4,"temperature":0,"messages":[{"role":"user","content":"hi"}]}`},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":4,"temperature":0,"stream":true,"system":"be brief","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}`},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":4,"stream":true,"messages":[{"role":"user","content":[]}]}`},
		{"/v1/messages", `{"model":"nope","max_tokens":4,"stream":true,"messages":[{"role":"user","content":"hi"}]}`},
		{"/v1/messages", `{"model":"tiny-embed","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`},
		{"/v1/messages", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":4,"messages":[]}`},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":4,"messages":[{"role":"user","content":5}]}`},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":4,"stream":true,"messages":[{"role":"user","content":"hi"}]} x`},
		// The other routes' refusals, in Ollama's order of checks.
		{"/api/generate", `{}`},
		{"/api/generate", `{"model":"  ","prompt":"x"}`},
		{"/api/generate", `{"model":"bad name!","prompt":"x"}`},
		{"/api/generate", `null x`},
		{"/api/chat", `{"model":"bad name!","messages":[]}`},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[]}`},
		{"/v1/chat/completions", `{"messages":[]}`},
		{"/v1/chat/completions", `null`},
		{"/v1/chat/completions", `{"model":"bad name!","messages":[{"role":"user","content":"x"}]}`},
		{"/v1/completions", `{"prompt":"x"}`},
		{"/v1/completions", `{"model":"tiny-embed","prompt":"x"}`},
		{"/v1/embeddings", `{"encoding_format":"bad","input":"x"}`},
		{"/v1/embeddings", `{"encoding_format":"bad","model":"tiny-embed","input":"x"}`},
		{"/v1/embeddings", `{"model":"tiny-embed"}`},
		{"/v1/embeddings", `{"model":"tiny-embed","input":[]}`},
		{"/v1/embeddings", `{"model":"tiny-embed","input":5}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"x","top_logprobs":21}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"x","top_logprobs":21,"top_logprobs":null}`},
		{"/api/chat", `{"messages":[],"top_logprobs":-1}`},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":21}`},
		{"/v1/completions", `{"model":"tiny-embed","prompt":"x","logprobs":21}`},
		{"/v1/completions", `{"model":"tiny-embed","prompt":"x","logprobs":21,"logprobs":null}`},
	} {
		want := compatAnswerShape(t, mustPost(t, ctx, real, tt.path, tt.body))
		got := compatAnswerShape(t, mustPost(t, ctx, s.URL, tt.path, tt.body))
		if got != want {
			t.Errorf("%s %s:\nfake %s\nreal %s", tt.path, tt.body, got, want)
		}
	}
}
