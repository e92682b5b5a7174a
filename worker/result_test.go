package worker

import (
	"bytes"
	"encoding/json"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

func TestResult(t *testing.T) {
	t.Parallel()
	lines := func(ss ...string) [][]byte {
		var out [][]byte
		for _, s := range ss {
			out = append(out, []byte(s))
		}
		return out
	}
	tests := []struct {
		name     string
		kind     broker.Kind
		ct       string
		frames   [][]byte
		want     map[string]any // fields checked
		wantDone bool
	}{
		{"chat stream", broker.KindChat, "application/x-ndjson", lines(
			`{"model":"m","created_at":"2025-01-02T03:04:05Z","message":{"role":"assistant","content":"Hel","thinking":"hm"},"done":false}`+"\n",
			`{"model":"m","created_at":"2025-01-02T03:04:05Z","message":{"role":"assistant","content":"lo","tool_calls":[{"function":{"name":"f"}}]},"done":false}`+"\n",
			`{"model":"m","created_at":"2025-01-02T03:04:05Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","eval_count":2}`+"\n"),
			map[string]any{"content": "Hello", "thinking": "hm", "done": true, "eval_count": 2.0, "calls": 1}, true},
		{"generate stream without done", broker.KindGenerate, "application/x-ndjson", lines(
			`{"model":"m","created_at":"2025-01-02T03:04:05Z","response":"a","done":false}`+"\n",
			`{"model":"m","created_at":"2025-01-02T03:04:05Z","response":"b","done":false}`+"\n"),
			map[string]any{"response": "ab", "done": false}, false},
		{"whole body", broker.KindEmbed, "application/json; charset=utf-8", lines(`{"embeddings":[[1,2]]}`),
			map[string]any{"raw": `{"embeddings":[[1,2]]}`}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res, done := result(tt.kind, tt.ct, tt.frames)
			if done != tt.wantDone {
				t.Errorf("sawDone = %v, want %v", done, tt.wantDone)
			}
			if raw, ok := tt.want["raw"]; ok {
				if string(res) != raw {
					t.Fatalf("result = %s, want %s", res, raw)
				}
				return
			}
			var m map[string]any
			if err := json.Unmarshal(res, &m); err != nil {
				t.Fatalf("result %s: %v", res, err)
			}
			msg, _ := m["message"].(map[string]any)
			for k, v := range tt.want {
				var got any
				switch k {
				case "content", "thinking":
					got = msg[k]
				case "calls":
					calls, _ := msg["tool_calls"].([]any)
					got = len(calls)
				default:
					got = m[k]
				}
				if got != v {
					t.Errorf("%s = %v, want %v (result %s)", k, got, v, res)
				}
			}
		})
	}
}

func TestStreamError(t *testing.T) {
	t.Parallel()
	cases := []struct {
		ct     string
		frames []string
		want   string
	}{
		{"application/x-ndjson", []string{`{"response":"a","done":false}` + "\n", `{"error":"llama runner process has terminated"}` + "\n"}, "llama runner process has terminated"},
		{"application/x-ndjson", []string{`{"response":"a","done":false}` + "\n", `{"response":"","done":true}` + "\n"}, ""},
		{"application/x-ndjson", []string{`{"response":"a","done":false}` + "\n"}, ""},
		{"text/event-stream", []string{"data: {\"choices\":[]}\n\n", "data: {\"error\":{\"message\":\"boom\",\"type\":\"api_error\"}}\n\n"}, "boom"},
		{"text/event-stream", []string{"data: {\"choices\":[]}\n\n", "data: [DONE]\n\n"}, ""},
		{"application/json", []string{`{"error":"not a stream"}`}, ""},
		{"application/x-ndjson", nil, ""},
	}
	for _, c := range cases {
		var frames [][]byte
		for _, f := range c.frames {
			frames = append(frames, []byte(f))
		}
		if got := streamError(c.ct, frames); got != c.want {
			t.Errorf("%s %q: %q, want %q", c.ct, c.frames, got, c.want)
		}
	}
}

// The result of an OpenAI-compatible stream is the chat.completion or text_completion a
// non-streamed request gets (the shapes of Ollama's openai package): deltas joined per
// choice, tool calls merged by index (a call with another id is another call, as Ollama
// sends each whole, all at index 0 for most models), the last finish_reason, logprobs
// joined, the usage when the stream carried it.
func TestSSEResult(t *testing.T) {
	t.Parallel()
	events := func(ss ...string) [][]byte {
		var out [][]byte
		for _, s := range ss {
			out = append(out, []byte("data: "+s+"\n\n"))
		}
		return append(out, []byte("data: [DONE]\n\n"))
	}
	const head = `"id":"chatcmpl-7","object":"chat.completion.chunk","created":1700000000,"model":"m","system_fingerprint":"fp_ollama"`
	tests := []struct {
		name   string
		kind   broker.Kind
		frames [][]byte
		want   string
	}{
		{"ollama chat: reasoning, whole tool calls, logprobs, usage", broker.KindOpenAIChat, events(
			`{`+head+`,"choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":"Let me"},"finish_reason":null}]}`,
			`{`+head+`,"choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":" see."},"finish_reason":null}]}`,
			`{`+head+`,"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null,"logprobs":{"content":[{"token":"Hi","logprob":-0.5,"bytes":[72,105]}]}}]}`,
			`{`+head+`,"choices":[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":[{"id":"call_a","index":0,"type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}]},"finish_reason":null}]}`,
			`{`+head+`,"choices":[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":[{"id":"call_b","index":0,"type":"function","function":{"name":"get_time","arguments":"{}"}}]},"finish_reason":null}]}`,
			`{`+head+`,"choices":[{"index":0,"delta":{"role":"assistant","content":"!"},"finish_reason":"tool_calls","logprobs":{"content":[{"token":"!","logprob":-0.25,"bytes":[33]}]}}]}`,
			`{`+head+`,"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}`),
			`{"id":"chatcmpl-7","object":"chat.completion","created":1700000000,"model":"m","system_fingerprint":"fp_ollama","choices":[{"index":0,` +
				`"message":{"role":"assistant","content":"Hi!","reasoning":"Let me see.","tool_calls":[` +
				`{"id":"call_a","index":0,"type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}},` +
				`{"id":"call_b","index":0,"type":"function","function":{"name":"get_time","arguments":"{}"}}]},` +
				`"finish_reason":"tool_calls","logprobs":{"content":[{"token":"Hi","logprob":-0.5,"bytes":[72,105]},{"token":"!","logprob":-0.25,"bytes":[33]}]}}],` +
				`"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}`},
		{"tool call arguments in pieces, two choices", broker.KindOpenAIChat, events(
			`{`+head+`,"choices":[{"index":1,"delta":{"role":"assistant","content":"B"},"finish_reason":null},{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}`,
			`{`+head+`,"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\""}}]},"finish_reason":null}]}`,
			`{`+head+`,"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_2","type":"function","function":{"name":"g","arguments":"{}"}}]},"finish_reason":null}]}`,
			`{`+head+`,"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]},"finish_reason":null}]}`,
			`{`+head+`,"choices":[{"index":1,"delta":{"content":"ye"},"finish_reason":"stop"},{"index":0,"delta":{},"finish_reason":"tool_calls"}]}`),
			`{"id":"chatcmpl-7","object":"chat.completion","created":1700000000,"model":"m","system_fingerprint":"fp_ollama","choices":[` +
				`{"index":0,"message":{"role":"assistant","content":"","tool_calls":[` +
				`{"id":"call_1","index":0,"type":"function","function":{"name":"f","arguments":"{\"a\":1}"}},` +
				`{"id":"call_2","index":1,"type":"function","function":{"name":"g","arguments":"{}"}}]},"finish_reason":"tool_calls"},` +
				`{"index":1,"message":{"role":"assistant","content":"Bye"},"finish_reason":"stop"}]}`},
		{"ollama completion with usage", broker.KindOpenAICompletion, events(
			`{"id":"cmpl-3","object":"text_completion","created":1700000000,"choices":[{"text":"Once","index":0,"finish_reason":null}],"model":"m","system_fingerprint":"fp_ollama","usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}`,
			`{"id":"cmpl-3","object":"text_completion","created":1700000001,"choices":[{"text":" upon","index":0,"finish_reason":null}],"model":"m","system_fingerprint":"fp_ollama","usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}`,
			`{"id":"cmpl-3","object":"text_completion","created":1700000001,"choices":[{"text":"","index":0,"finish_reason":"length"}],"model":"m","system_fingerprint":"fp_ollama","usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}`,
			`{"id":"cmpl-3","object":"text_completion","created":1700000001,"choices":[],"model":"m","system_fingerprint":"fp_ollama","usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}`),
			`{"id":"cmpl-3","object":"text_completion","created":1700000001,"model":"m","system_fingerprint":"fp_ollama",` +
				`"choices":[{"text":"Once upon","index":0,"finish_reason":"length"}],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}`},
		{"cut short: no finish_reason, no usage, no fingerprint", broker.KindOpenAIChat, events(
			`{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"a<b"}}]}`),
			`{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"a\u003cb"},"finish_reason":null}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res, done := result(tt.kind, "text/event-stream", tt.frames)
			if string(res) != tt.want || !done {
				t.Errorf("result (done %v)\n%s\nwant\n%s", done, res, tt.want)
			}
		})
	}
}

// A streamed chat or generate result is the final frame as Ollama sent it, every member
// kept in its order (those foreman's types do not know too: the image generation's
// image, completed and total), with only what Ollama's non-streamed answer joins over
// the frames replaced: the message's content, thinking and tool calls (the response and
// thinking for generate) and the logprobs, in the place Ollama's own answer has them.
func TestNDJSONResultKeepsEveryMember(t *testing.T) {
	t.Parallel()
	lines := func(ss ...string) [][]byte {
		var out [][]byte
		for _, s := range ss {
			out = append(out, []byte(s+"\n"))
		}
		return out
	}
	const at = `"created_at":"2026-02-27T10:00:00.123456789Z"`
	tests := []struct {
		name   string
		kind   broker.Kind
		frames [][]byte
		want   string
	}{
		{"image generation", broker.KindGenerate, lines(
			`{"model":"flux","`+at[1:]+`,"response":"","done":false,"completed":1,"total":2}`,
			`{"model":"flux","`+at[1:]+`,"response":"","done":false,"completed":2,"total":2}`,
			`{"model":"flux","`+at[1:]+`,"response":"","done":true,"done_reason":"stop","total_duration":900,"load_duration":100,"image":"iVBORw0KGgo=","completed":2,"total":2}`),
			`{"model":"flux",` + at + `,"response":"","done":true,"done_reason":"stop","total_duration":900,"load_duration":100,"image":"iVBORw0KGgo=","completed":2,"total":2}`},
		{"generate: thinking and logprobs", broker.KindGenerate, lines(
			`{"model":"m",`+at+`,"response":"","thinking":"hm","done":false}`,
			`{"model":"m",`+at+`,"response":"A","done":false,"logprobs":[{"token":"A","logprob":-0.1}]}`,
			`{"model":"m",`+at+`,"response":"<b>","done":false,"logprobs":[{"token":"<b>","logprob":-0.2,"top_logprobs":[{"token":"<b>","logprob":-0.2}]}]}`,
			`{"model":"m",`+at+`,"response":"","done":true,"done_reason":"stop","context":[1,2],"total_duration":5,"eval_count":2,"tool_calls":[{"function":{"name":"f","arguments":{}}}],"future":{"x":1}}`),
			`{"model":"m",` + at + `,"response":"A\u003cb\u003e","thinking":"hm","done":true,"done_reason":"stop","context":[1,2],"total_duration":5,"eval_count":2,` +
				`"tool_calls":[{"function":{"name":"f","arguments":{}}}],"logprobs":[{"token":"A","logprob":-0.1},{"token":"\u003cb\u003e","logprob":-0.2,"top_logprobs":[{"token":"\u003cb\u003e","logprob":-0.2}]}],"future":{"x":1}}`},
		{"chat: thinking, tool calls, logprobs, remote members", broker.KindChat, lines(
			`{"model":"m","remote_model":"big","remote_host":"https://ollama.com",`+at+`,"message":{"role":"assistant","content":"","thinking":"Let me"},"done":false}`,
			`{"model":"m","remote_model":"big","remote_host":"https://ollama.com",`+at+`,"message":{"role":"assistant","content":"Hi","tool_calls":[{"id":"call_a","function":{"index":0,"name":"f","arguments":{"a":1}}}]},"done":false,"logprobs":[{"token":"Hi","logprob":-0.3}]}`,
			`{"model":"m","remote_model":"big","remote_host":"https://ollama.com",`+at+`,"message":{"role":"assistant","content":"!","tool_calls":[{"id":"call_b","function":{"index":1,"name":"g","arguments":{}}}]},"done":false,"logprobs":[{"token":"!","logprob":-0.4}]}`,
			`{"model":"m","remote_model":"big","remote_host":"https://ollama.com",`+at+`,"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":7,"eval_count":3}`),
			`{"model":"m","remote_model":"big","remote_host":"https://ollama.com",` + at + `,"message":{"role":"assistant","content":"Hi!","thinking":"Let me",` +
				`"tool_calls":[{"id":"call_a","function":{"index":0,"name":"f","arguments":{"a":1}}},{"id":"call_b","function":{"index":1,"name":"g","arguments":{}}}]},` +
				`"done":true,"done_reason":"stop","logprobs":[{"token":"Hi","logprob":-0.3},{"token":"!","logprob":-0.4}],"total_duration":7,"eval_count":3}`},
		{"chat: an empty logprobs and thinking go, as in Ollama's answer", broker.KindChat, lines(
			`{"model":"m",`+at+`,"message":{"role":"assistant","content":"a","thinking":""},"done":false,"logprobs":[]}`,
			`{"model":"m",`+at+`,"message":{"role":"assistant","content":"b","thinking":""},"done":true,"logprobs":null}`),
			`{"model":"m",` + at + `,"message":{"role":"assistant","content":"ab"},"done":true}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res, done := result(tt.kind, "application/x-ndjson", tt.frames)
			if string(res) != tt.want || !done {
				t.Errorf("result (done %v)\n%s\nwant\n%s", done, res, tt.want)
			}
		})
	}
}

// A chat's tool calls are all the lines' when the request offers tools, and the final
// line's as it is when it offers none: Ollama joins them only then (v0.17.4 ChatHandler).
func TestAssembledToolCallsFollowTheRequest(t *testing.T) {
	lines := []string{
		`{"model":"m","message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"a","arguments":{}}}]},"done":false}`,
		`{"model":"m","message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"b","arguments":{}}}]},"done":true}`,
	}
	for _, tt := range []struct {
		finalCalls bool
		want       string
	}{
		{false, `[{"function":{"name":"a","arguments":{}}},{"function":{"name":"b","arguments":{}}}]`},
		{true, `[{"function":{"name":"b","arguments":{}}}]`},
	} {
		a := ndjsonAnswer{kind: broker.KindChat, finalCalls: tt.finalCalls}
		for _, l := range lines {
			a.add([]byte(l))
		}
		res, done := a.result()
		var got struct {
			Message struct {
				ToolCalls json.RawMessage `json:"tool_calls"`
			} `json:"message"`
		}
		if err := json.Unmarshal(res, &got); err != nil || !done || string(got.Message.ToolCalls) != tt.want {
			t.Errorf("finalCalls %v: %s (done %v); want tool calls %s", tt.finalCalls, res, done, tt.want)
		}
	}
}

// An assembled answer's size is the answer as built: each line once, the final line
// with the texts of the lines before it; lines that are no JSON object add up.
func TestAssembledAnswerSize(t *testing.T) {
	t.Parallel()
	first := `{"model":"m","message":{"role":"assistant","content":"Hello"},"done":false}`
	final := `{"model":"m","message":{"role":"assistant","content":", world"},"done":true}`
	for _, tt := range []struct {
		name  string
		lines []string
		want  int
	}{
		{"one line", []string{final}, len(final)},
		{"two lines", []string{first, final}, len(final) + len("Hello")},
		{"after the final line", []string{first, final, "garbage", "more"}, len(final) + len("Hello") + len("garbage") + len("more")},
	} {
		a := ndjsonAnswer{kind: broker.KindChat}
		for _, l := range tt.lines {
			a.add([]byte(l))
		}
		if got := a.size(); got != tt.want {
			t.Errorf("%s: size %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestTargetCallOfANonStreamedChat(t *testing.T) {
	for _, tt := range []struct {
		kind                      broker.Kind
		body                      string
		streams, assembled, tools bool
	}{
		{broker.KindChat, `{"model":"m","stream":false,"tools":[{"type":"function"}]}`, true, true, true},
		{broker.KindChat, `{"model":"m","stream":false,"tools":[]}`, true, true, false},
		{broker.KindGenerate, `{"model":"m","stream":false}`, true, true, false},
		{broker.KindChat, `{"model":"m"}`, true, false, false},
		{broker.KindOpenAIChat, `{"model":"m","stream":false,"tools":[{"type":"function"}]}`, true, true, true},
		{broker.KindOpenAICompletion, `{"model":"m","prompt":"x"}`, true, true, false},
		{broker.KindOpenAIChat, `{"model":"m","stream":true}`, true, false, false},
		{broker.KindOpenAIResponses, `{"model":"m","input":"x"}`, true, true, false},
		{broker.KindOpenAIResponses, `{"model":"m","input":"x","stream":true}`, true, false, false},
		{broker.KindAnthropicMessages, `{"model":"m","messages":[]}`, true, true, false},
		{broker.KindOpenAIChat, `{"model":"m","_debug_render_only":true}`, false, false, false},
		{broker.KindChat, `{"model":"m","stream":false,"_debug_render_only":true}`, false, false, false},
		{broker.KindEmbed, `{"model":"m","input":"x"}`, false, false, false},
	} {
		c := newTargetCall(tt.kind, []byte(tt.body))
		if c.streams != tt.streams || c.assembled != tt.assembled || c.tools != tt.tools {
			t.Errorf("%s %s: streams %v assembled %v tools %v, want %v %v %v", tt.kind, tt.body, c.streams, c.assembled, c.tools, tt.streams, tt.assembled, tt.tools)
		}
		if c.assembled == bytes.Equal(c.body, []byte(tt.body)) {
			t.Errorf("%s %s: sent %s", tt.kind, tt.body, c.body)
		}
	}
}
