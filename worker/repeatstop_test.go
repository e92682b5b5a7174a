package worker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// assembleEvents runs an assembly of kind over the SSE data payloads, as callTarget does
// with the target's stream, and returns what it relayed and its error.
func assembleEvents(t *testing.T, kind broker.Kind, data []string) ([]byte, error) {
	t.Helper()
	return assembleToolEvents(t, kind, data, false)
}

// assembleToolEvents is assembleEvents for a request that offers tools or not.
func assembleToolEvents(t *testing.T, kind broker.Kind, data []string, tools bool) ([]byte, error) {
	t.Helper()
	var got []byte
	a := &assembly{kind: kind, tools: tools, answer: ndjsonAnswer{kind: kind, finalCalls: !tools},
		setCT: func(string) error { return nil }, relay: func(b []byte) error { got = b; return nil }}
	a.framing, a.outCT = assembledFraming(kind)
	a.check = answerCheck{contentType: func() string { return a.ct }, pass: a.take}
	const ct = "text/event-stream"
	if err := a.contentType(ct); err != nil {
		t.Fatal(err)
	}
	for _, d := range data {
		if err := a.frame([]byte("data: " + d + "\n\n")); err != nil {
			t.Fatal(err)
		}
	}
	_, err := a.end(ct, nil, slog.New(slog.DiscardHandler))
	return got, err
}

// chatChunks are Ollama's chunks of a streamed OpenAI-compatible chat for texts, each
// with the role, as its ChatWriter writes them.
func chatChunks(texts ...string) []string {
	var out []string
	for _, s := range texts {
		c, _ := json.Marshal(s)
		out = append(out, `{"id":"chatcmpl-7","object":"chat.completion.chunk","created":1796399825,"model":"tiny-a","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":`+string(c)+`},"finish_reason":null}]}`)
	}
	return out
}

func repeated(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// Ollama stops a generation whose token came 30 more times in a row after its first
// (llm/server.go: "token repeat limit reached"): the stream just stops, without its
// usage and [DONE], and Ollama answers the non-streamed call 200 with the text so far, no
// finish_reason and a usage of zeros (measured on 0.17.4 with tiny-a: 31 "Z"). The
// assembled answer is that one, where a stream cut otherwise (a runner that failed, whose
// error line Ollama's OpenAI writer makes a chunk without a model) still fails with a 500.
func TestAssembledOpenAIAnswerStoppedForARepeatedToken(t *testing.T) {
	t.Parallel()
	zs := strings.Repeat("Z", 31)
	completion := func(texts ...string) []string {
		var out []string
		for _, s := range texts {
			c, _ := json.Marshal(s)
			out = append(out, `{"id":"cmpl-9","object":"text_completion","created":1796399825,"model":"tiny-a","system_fingerprint":"fp_ollama","choices":[{"text":`+string(c)+`,"index":0,"finish_reason":null}]}`)
		}
		return out
	}
	for _, tt := range []struct {
		name string
		kind broker.Kind
		data []string
		want string // the answer; "" for a 500
	}{
		{"chat", broker.KindOpenAIChat, chatChunks(append([]string{"a", " b"}, repeated("Z", 31)...)...),
			`{"id":"chatcmpl-7","object":"chat.completion","created":1796399825,"model":"tiny-a","system_fingerprint":"fp_ollama","choices":[{"index":0,"message":{"role":"assistant","content":"a b` + zs + `"},"finish_reason":null}],"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}` + "\n"},
		{"completion", broker.KindOpenAICompletion, completion(repeated("Z", 31)...),
			`{"id":"cmpl-9","object":"text_completion","created":1796399825,"model":"tiny-a","system_fingerprint":"fp_ollama","choices":[{"text":"` + zs + `","index":0,"finish_reason":null}],"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}` + "\n"},
		{"spaces around the token count as the token", broker.KindOpenAIChat, chatChunks(append(repeated(" Z", 15), repeated("Z\n", 15)...)...),
			`{"id":"chatcmpl-7","object":"chat.completion","created":1796399825,"model":"tiny-a","system_fingerprint":"fp_ollama","choices":[{"index":0,"message":{"role":"assistant","content":"` + strings.Repeat(" Z", 15) + strings.Repeat(`Z\n`, 15) + `"},"finish_reason":null}],"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}` + "\n"},
		// A runner that failed after the repeats: Ollama's writer decodes its error line
		// {"error":...} as a response and writes it as a chunk without a model.
		{"a runner that failed after the repeats", broker.KindOpenAIChat, append(chatChunks(repeated("Z", 31)...),
			`{"id":"chatcmpl-7","object":"chat.completion.chunk","created":1796399825,"model":"","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`), ""},
		{"a completion's runner that failed after the repeats", broker.KindOpenAICompletion, append(completion(repeated("Z", 31)...),
			`{"id":"cmpl-9","object":"text_completion","created":1796399825,"choices":[{"text":"","index":0,"finish_reason":null}],"model":"","system_fingerprint":"fp_ollama","usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}`), ""},
		{"fewer repeats than Ollama's limit", broker.KindOpenAIChat, chatChunks(append([]string{"a"}, repeated("Z", 29)...)...), ""},
		{"a different last token", broker.KindOpenAIChat, chatChunks(append(repeated("Z", 31), "y")...), ""},
		{"a tool call among the repeats", broker.KindOpenAIChat, append(chatChunks(repeated("Z", 31)...)[:30],
			`{"id":"chatcmpl-7","object":"chat.completion.chunk","created":1,"model":"tiny-a","choices":[{"index":0,"delta":{"role":"assistant","content":"Z","tool_calls":[{"id":"c","index":0,"type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":null}]}`), ""},
	} {
		got, err := assembleEvents(t, tt.kind, tt.data)
		if tt.want == "" {
			var he *ollama.HTTPError
			if !errors.As(err, &he) || he.StatusCode != http.StatusInternalServerError || he.Message != errStreamCut || got != nil {
				t.Errorf("%s: %q, %v; want a 500 for a cut stream", tt.name, got, err)
			}
			continue
		}
		if err != nil || string(got) != tt.want {
			t.Errorf("%s: %v\n got %s\nwant %s", tt.name, err, got, tt.want)
		}
	}
}

// messagesEvents are Ollama's events of a streamed Anthropic message: message_start, then
// a block per kind of delta (its start, its deltas), as its StreamConverter writes them.
// A delta is "text:" or "thinking:" and its text, or an event's JSON as it is.
func messagesEvents(deltas ...string) []string {
	out := []string{`{"type":"message_start","message":{"id":"msg_b8f0","type":"message","role":"assistant","model":"tiny-a","content":[],"usage":{"input_tokens":2,"output_tokens":0}}}`}
	index, open := -1, ""
	for _, d := range deltas {
		kind, text, ok := strings.Cut(d, ":")
		if !ok || strings.HasPrefix(d, "{") {
			out = append(out, d)
			continue
		}
		if kind != open {
			if open != "" {
				out = append(out, fmt.Sprintf(`{"type":"content_block_stop","index":%d}`, index))
			}
			index, open = index+1, kind
			out = append(out, fmt.Sprintf(`{"type":"content_block_start","index":%d,"content_block":{"type":%q,%q:""}}`, index, kind, kind))
		}
		t, _ := json.Marshal(text)
		out = append(out, fmt.Sprintf(`{"type":"content_block_delta","index":%d,"delta":{"type":"%s_delta",%q:%s}}`, index, kind, kind, t))
	}
	return out
}

// prefixed is each of texts with prefix p.
func prefixed(p string, texts []string) []string {
	out := make([]string, len(texts))
	for i, s := range texts {
		out[i] = p + s
	}
	return out
}

// Ollama answers the non-streamed /v1/messages of a generation it stopped for a repeated
// token with ToMessagesResponse of a response that is not done: all the thinking, then all
// the text, no stop_reason and a usage of zeros (measured on 0.17.4: 31 "Z" for a greedy
// "a b c" on tiny-a), while its stream just stops. The assembled answer is that one; a
// stream cut otherwise still fails with a 500.
func TestAssembledMessagesStoppedForARepeatedToken(t *testing.T) {
	t.Parallel()
	zs := strings.Repeat("Z", 31)
	head := `{"id":"msg_b8f0","type":"message","role":"assistant","model":"tiny-a","content":`
	zero := `,"usage":{"input_tokens":0,"output_tokens":0}}` + "\n"
	for _, tt := range []struct {
		name string
		data []string
		want string // the answer; "" for a 500
	}{
		{"text", messagesEvents(prefixed("text:", repeated("Z", 31))...), head + `[{"type":"text","text":"` + zs + `"}]` + zero},
		{"thinking then text", messagesEvents(append([]string{"thinking:hm", "text:a "}, prefixed("text:", repeated("Z", 31))...)...),
			head + `[{"type":"thinking","thinking":"hm"},{"type":"text","text":"a ` + zs + `"}]` + zero},
		{"thinking repeated", messagesEvents(prefixed("thinking:", repeated(" Z", 31))...),
			head + `[{"type":"thinking","thinking":"` + strings.Repeat(" Z", 31) + `"}]` + zero},
		{"fewer repeats than Ollama's limit", messagesEvents(prefixed("text:", append([]string{"a"}, repeated("Z", 29)...))...), ""},
		{"a different last token", messagesEvents(prefixed("text:", append(repeated("Z", 31), "y"))...), ""},
		{"a block that starts among the repeats", messagesEvents(append(prefixed("thinking:", repeated("Z", 15)), prefixed("text:", repeated("Z", 16))...)...), ""},
		{"a block stop after the repeats", messagesEvents(append(prefixed("text:", repeated("Z", 31)), `{"type":"content_block_stop","index":0}`)...), ""},
		{"an end without message_stop", messagesEvents(append(prefixed("text:", repeated("Z", 31)), `{"type":"content_block_stop","index":0}`,
			`{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"input_tokens":2,"output_tokens":31}}`)...), ""},
		{"no message_start", messagesEvents(prefixed("text:", repeated("Z", 31))...)[1:], "no answer"},
	} {
		got, err := assembleEvents(t, broker.KindAnthropicMessages, tt.data)
		switch tt.want {
		case "":
			var he *ollama.HTTPError
			if !errors.As(err, &he) || he.StatusCode != http.StatusInternalServerError || he.Message != errStreamCut || got != nil {
				t.Errorf("%s: %q, %v; want a 500 for a cut stream", tt.name, got, err)
			}
		case "no answer":
			if err != nil || got != nil {
				t.Errorf("%s: %q, %v; want nothing, for the run's answer check to fail", tt.name, got, err)
			}
		default:
			if err != nil || string(got) != tt.want {
				t.Errorf("%s: %v\n got %s\nwant %s", tt.name, err, got, tt.want)
			}
		}
	}
}

// A tool call before the repeats: Ollama's ChatHandler keeps every chunk's calls when the
// request offers tools, and ToMessagesResponse puts them after the text and says
// "tool_use" though the generation never ended; without tools it keeps the last chunk's,
// none here. The text is one block, as the answer joins it, where the stream has two.
func TestAssembledMessagesRepeatStopAfterAToolCall(t *testing.T) {
	t.Parallel()
	data := messagesEvents(append([]string{"text:a",
		`{"type":"content_block_stop","index":0}`,
		`{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_1","name":"f","input":{}}}`,
		`{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"x\":\"\u003c1\u003e\"}"}}`,
		`{"type":"content_block_stop","index":1}`,
		`{"type":"content_block_start","index":2,"content_block":{"type":"text","text":""}}`},
		prefixed(`{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":`, repeated(`"Z"}}`, 31))...)...)
	text := `{"type":"text","text":"a` + strings.Repeat("Z", 31) + `"}`
	head := `{"id":"msg_b8f0","type":"message","role":"assistant","model":"tiny-a","content":[`
	zero := `"usage":{"input_tokens":0,"output_tokens":0}}` + "\n"
	for _, tt := range []struct {
		tools bool
		want  string
	}{
		{true, head + text + `,{"type":"tool_use","id":"call_1","name":"f","input":{"x":"\u003c1\u003e"}}],"stop_reason":"tool_use",` + zero},
		{false, head + text + `],` + zero},
	} {
		got, err := assembleToolEvents(t, broker.KindAnthropicMessages, data, tt.tools)
		if err != nil || string(got) != tt.want {
			t.Errorf("tools %v: %v\n got %s\nwant %s", tt.tools, err, got, tt.want)
		}
	}
}

// responsesEvents are Ollama's events of a streamed Response for a request without
// settings: response.created and .in_progress, then a delta each: "text:" or
// "reasoning:" and its text, or an event's JSON as it is (the stream converter's maps,
// members sorted).
func responsesEvents(deltas ...string) []string {
	resp := `{"background":false,"completed_at":null,"created_at":1796400868,"error":null,"frequency_penalty":0,"id":"resp_588352","incomplete_details":null,"instructions":null,"max_output_tokens":100,"max_tool_calls":null,"metadata":{},"model":"tiny-a","object":"response","output":[],"parallel_tool_calls":true,"presence_penalty":0,"previous_response_id":null,"prompt_cache_key":null,"reasoning":null,"safety_identifier":null,"service_tier":"default","status":"in_progress","store":false,"temperature":0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_logprobs":0,"top_p":1,"truncation":"disabled","usage":null}`
	out := []string{`{"response":` + resp + `,"sequence_number":0,"type":"response.created"}`, `{"response":` + resp + `,"sequence_number":1,"type":"response.in_progress"}`}
	seq, index, open := 2, -1, ""
	add := func(format string, args ...any) {
		out = append(out, fmt.Sprintf(format, args...)+fmt.Sprintf(`,"sequence_number":%d,"type":%q}`, seq, eventType(format)))
		seq++
	}
	for _, d := range deltas {
		kind, text, ok := strings.Cut(d, ":")
		if !ok || strings.HasPrefix(d, "{") {
			out = append(out, d)
			continue
		}
		t, _ := json.Marshal(text)
		switch kind {
		case "reasoning":
			if open != kind {
				index, open = index+1, kind
				add(`{"item":{"id":"rs_4242","summary":[],"type":"reasoning"},"output_index":%d#response.output_item.added`, index)
			}
			add(`{"delta":%s,"item_id":"rs_4242","output_index":%d,"summary_index":0#response.reasoning_summary_text.delta`, t, index)
		case "text":
			if open != kind {
				index, open = index+1, kind
				add(`{"item":{"content":[],"id":"msg_53633","role":"assistant","status":"in_progress","type":"message"},"output_index":%d#response.output_item.added`, index)
				add(`{"content_index":0,"item_id":"msg_53633","output_index":%d,"part":{"annotations":[],"logprobs":[],"text":"","type":"output_text"}#response.content_part.added`, index)
			}
			add(`{"content_index":0,"delta":%s,"item_id":"msg_53633","logprobs":[],"output_index":%d#response.output_text.delta`, t, index)
		}
	}
	for i, e := range out {
		out[i] = eventTypeMark.ReplaceAllString(e, "")
	}
	return out
}

// eventTypeMark ends a format in responsesEvents with its event's type.
var eventTypeMark = regexp.MustCompile(`#[a-z_.]+`)

func eventType(format string) string {
	return strings.TrimPrefix(eventTypeMark.FindString(format), "#")
}

// responseNotDone is Ollama's non-streamed answer (openai.ToResponse, created and written
// at "T") for the request responsesEvents answers, with output.
func responseNotDone(output string) string {
	return `{"id":"resp_588352","object":"response","created_at":T,"completed_at":T,"status":"completed","incomplete_details":null,"model":"tiny-a","previous_response_id":null,"instructions":null,"output":` + output + `,"error":null,"tools":[],"tool_choice":"auto","truncation":"disabled","parallel_tool_calls":true,"text":{"format":{"type":"text"}},"top_p":1,"presence_penalty":0,"frequency_penalty":0,"top_logprobs":0,"temperature":0,"reasoning":null,"usage":{"input_tokens":0,"output_tokens":0,"total_tokens":0,"input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":0}},"max_output_tokens":100,"max_tool_calls":null,"store":false,"background":false,"service_tier":"default","metadata":{},"safety_identifier":null,"prompt_cache_key":null}` + "\n"
}

// Ollama answers the non-streamed /v1/responses of a generation it stopped for a repeated
// token with ToResponse of a response that is not done: "completed", a usage of zeros, the
// reasoning item (its id made from the response's) and the message with all the text.
// The assembled answer is that one, completed when it is assembled; a stream cut
// otherwise, or one with a function call (whose text Ollama's stream drops), still fails
// with a 500.
func TestAssembledResponsesStoppedForARepeatedToken(t *testing.T) {
	t.Parallel()
	zs := strings.Repeat("Z", 31)
	message := func(id, text string) string {
		return `{"id":"` + id + `","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"` + text + `","annotations":[],"logprobs":[]}]}`
	}
	call := `{"item":{"arguments":"","call_id":"call_1","id":"fc_1_0","name":"f","status":"in_progress","type":"function_call"},"output_index":0,"sequence_number":2,"type":"response.output_item.added"}`
	for _, tt := range []struct {
		name string
		data []string
		want string // the answer, its created_at and completed_at "T"; "" for a 500
	}{
		{"text", responsesEvents(prefixed("text:", repeated("Z", 31))...), responseNotDone(`[` + message("msg_53633", zs) + `]`)},
		{"reasoning then text", responsesEvents(append([]string{"reasoning:hm", "text:a "}, prefixed("text:", repeated(" Z", 31))...)...),
			responseNotDone(`[{"id":"rs_resp_588352","type":"reasoning","summary":[{"type":"summary_text","text":"hm"}],"encrypted_content":"hm"},` + message("msg_53633", "a "+strings.Repeat(" Z", 31)) + `]`)},
		{"reasoning repeated", responsesEvents(prefixed("reasoning:", repeated("Z", 31))...),
			responseNotDone(`[{"id":"rs_resp_588352","type":"reasoning","summary":[{"type":"summary_text","text":"` + zs + `"}],"encrypted_content":"` + zs + `"},` + message("msg_N", "") + `]`)},
		{"fewer repeats than Ollama's limit", responsesEvents(prefixed("text:", append([]string{"a"}, repeated("Z", 29)...))...), ""},
		{"a different last token", responsesEvents(prefixed("text:", append(repeated("Z", 31), "y"))...), ""},
		{"an item that starts among the repeats", responsesEvents(append(prefixed("reasoning:", repeated("Z", 15)), prefixed("text:", repeated("Z", 16))...)...), ""},
		{"a text done after the repeats", responsesEvents(append(prefixed("text:", repeated("Z", 31)),
			`{"content_index":0,"item_id":"msg_53633","logprobs":[],"output_index":0,"sequence_number":40,"text":"`+zs+`","type":"response.output_text.done"}`)...), ""},
		{"a function call before the repeats", responsesEvents(append([]string{call}, prefixed("reasoning:", repeated("Z", 31))...)...), ""},
	} {
		got, err := assembleEvents(t, broker.KindOpenAIResponses, tt.data)
		if tt.want == "" {
			var he *ollama.HTTPError
			if !errors.As(err, &he) || he.StatusCode != http.StatusInternalServerError || he.Message != errStreamCut || got != nil {
				t.Errorf("%s: %q, %v; want a 500 for a cut stream", tt.name, got, err)
			}
			continue
		}
		g := answerTimes.ReplaceAll(got, []byte(`"$1":T`))
		if strings.Contains(tt.want, "msg_N") {
			// No text came, so no message item: its id is made at random, as Ollama's is.
			g = regexp.MustCompile(`"id":"msg_\d+"`).ReplaceAll(g, []byte(`"id":"msg_N"`))
		}
		if err != nil || string(g) != tt.want || bytes.Equal(g, got) {
			t.Errorf("%s: %v\n got %s\nwant %s", tt.name, err, got, tt.want)
		}
	}
}

// answerTimes are the members a Responses answer gets when assembled: now, in seconds.
var answerTimes = regexp.MustCompile(`"(created_at|completed_at)":\d+`)

// ResponsesWriter sets completed_at when it writes the answer, and ToResponse's created_at
// is the last chunk's time, not the stream's start (its response.created): the assembled
// one is created and completed when it is assembled, however long the generation took.
func TestResponsesNotDoneIsCompletedNow(t *testing.T) {
	t.Parallel()
	now := time.Unix(1796400900, 0)
	got := responsesNotDone(sseFrames(responsesEvents(prefixed("text:", repeated("Z", 31))...)), now)
	if !bytes.Contains(got, []byte(`"created_at":1796400900,"completed_at":1796400900,"status":"completed"`)) {
		t.Errorf("got %s", got)
	}
	if got := responsesNotDone(sseFrames(responsesEvents("text:a")[2:]), now); got != nil {
		t.Errorf("a stream without a Response: %s, want nil", got)
	}
}

// A native chat or generate is assembled from NDJSON lines, and one that stops without
// done:true is answered done:false as Ollama's is: the repeat stop is asked only of the
// SSE kinds, whatever the events.
func TestRepeatStoppedIsNotAskedOfNativeKinds(t *testing.T) {
	t.Parallel()
	events := sseFrames(chatChunks(repeated("Z", 31)...))
	if !repeatStopped(broker.KindOpenAIChat, events) {
		t.Fatal("the OpenAI chat's events are not a repeat stop")
	}
	for _, kind := range []broker.Kind{broker.KindChat, broker.KindGenerate} {
		if repeatStopped(kind, events) {
			t.Errorf("%s: taken for a repeat stop", kind)
		}
	}
}

// sseFrames are the SSE events of data payloads.
func sseFrames(data []string) [][]byte {
	out := make([][]byte, len(data))
	for i, d := range data {
		out[i] = []byte("data: " + d + "\n\n")
	}
	return out
}

// A tool call before the repeats: Ollama's non-streamed chat keeps every chunk's calls when
// the request offers tools, and ToChatCompletion then says "tool_calls" though the
// generation never ended; without tools it keeps the last chunk's, none here.
func TestAssembledRepeatStopAfterAToolCall(t *testing.T) {
	t.Parallel()
	call := `{"id":"chatcmpl-7","object":"chat.completion.chunk","created":1796399825,"model":"tiny-a","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":[{"id":"call_1","index":0,"type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":null}]}`
	data := append([]string{call}, chatChunks(repeated("Z", 31)...)...)
	head := `{"id":"chatcmpl-7","object":"chat.completion","created":1796399825,"model":"tiny-a","system_fingerprint":"fp_ollama","choices":[{"index":0,"message":{"role":"assistant","content":"` + strings.Repeat("Z", 31) + `"`
	tail := `,"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}` + "\n"
	for _, tt := range []struct {
		tools bool
		want  string
	}{
		{true, head + `,"tool_calls":[{"id":"call_1","index":0,"type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}]` + tail},
		{false, head + `},"finish_reason":null}]` + tail},
	} {
		got, err := assembleToolEvents(t, broker.KindOpenAIChat, data, tt.tools)
		if err != nil || string(got) != tt.want {
			t.Errorf("tools %v: %v\n got %s\nwant %s", tt.tools, err, got, tt.want)
		}
	}
}

// A streamed answer relayed as it came is cut, and its job fails, only when an SSE stream
// of a /v1 kind stopped before its end for another reason than the repeat stop: a stream
// that ended, one Ollama stopped for a repeated token, a debug render (no end), a native
// stream (its runner's failure is an error line) and one with an error event are not.
func TestStreamedAnswerCut(t *testing.T) {
	t.Parallel()
	failed := `{"id":"chatcmpl-7","object":"chat.completion.chunk","created":1796399825,"model":"","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`
	frames := func(data ...string) [][]byte {
		var out [][]byte
		for _, d := range data {
			out = append(out, []byte("data: "+d+"\n\n"))
		}
		return out
	}
	chat := `{"model":"tiny-a","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	const sse = "text/event-stream"
	for _, tt := range []struct {
		name   string
		kind   broker.Kind
		body   string
		ct     string
		frames [][]byte
		cut    bool
	}{
		{"a runner that failed", broker.KindOpenAIChat, chat, sse, frames(append(chatChunks("a", "b"), failed)...), true},
		{"a stream that stops", broker.KindOpenAIChat, chat, sse, frames(chatChunks("a", "b")...), true},
		{"a message that stops", broker.KindAnthropicMessages, `{"model":"tiny-a","stream":true,"max_tokens":5,"messages":[]}`, sse, frames(messagesEvents("text:a", "text:b")...), true},
		{"a stream that ended", broker.KindOpenAIChat, chat, sse, frames(append(chatChunks("a", "b"), "[DONE]")...), false},
		{"a repeat stop", broker.KindOpenAIChat, chat, sse, frames(chatChunks(repeated("Z", 31)...)...), false},
		{"a debug render", broker.KindOpenAIChat, `{"model":"tiny-a","stream":true,"_debug_render_only":true,"messages":[]}`, sse, frames(chatChunks("a")...), false},
		{"an error event", broker.KindOpenAIChat, chat, sse, frames(append(chatChunks("a"), `{"error":{"message":"boom"}}`)...), false},
		{"a native stream", broker.KindChat, `{"model":"tiny-a","messages":[]}`, ollama.ContentTypeNDJSON, [][]byte{[]byte(`{"model":"tiny-a","message":{"role":"assistant","content":"a"},"done":false}` + "\n")}, false},
		{"an assembled answer", broker.KindOpenAIChat, `{"model":"tiny-a","messages":[]}`, "application/json", [][]byte{[]byte(`{"id":"chatcmpl-7"}` + "\n")}, false},
	} {
		err := newTargetCall(tt.kind, []byte(tt.body)).cut(tt.ct, tt.frames)
		var he *ollama.HTTPError
		if got := errors.As(err, &he) && he.StatusCode == http.StatusInternalServerError && he.Message == errStreamCut; got != tt.cut || (!tt.cut && err != nil) {
			t.Errorf("%s: %v; want cut %v", tt.name, err, tt.cut)
		}
	}
}
