package worker

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"

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
	a := &assembly{kind: kind, answer: ndjsonAnswer{kind: kind, finalCalls: !tools},
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
// assembled answer is that one, where a stream cut otherwise (a runner that failed,
// whose error line Ollama's OpenAI writer drops) still fails with a 500.
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

// Only the OpenAI-compatible chat and completion are told apart so: Ollama's Anthropic
// and Responses answers to such a stop are not built from their cut streams, which still
// fail with a 500.
func TestAssembledRepeatStopOfOtherKindsStillFails(t *testing.T) {
	t.Parallel()
	for _, kind := range []broker.Kind{broker.KindAnthropicMessages, broker.KindOpenAIResponses} {
		var data []string
		for range 31 {
			data = append(data, `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Z"}}`)
		}
		_, err := assembleEvents(t, kind, data)
		var he *ollama.HTTPError
		if !errors.As(err, &he) || he.StatusCode != http.StatusInternalServerError {
			t.Errorf("%s: %v; want a 500", kind, err)
		}
	}
	if repeatStopped(broker.KindChat, nil) {
		t.Error("a native chat (assembled from NDJSON lines, done:false as Ollama's) is not asked")
	}
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
