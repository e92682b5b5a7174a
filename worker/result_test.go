package worker

import (
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
		{"sse: last data json", broker.KindOpenAIChat, "text/event-stream", lines(
			"data: {\"id\":\"1\",\"n\":1}\n\n", "data: {\"id\":\"1\",\"n\":2}\n\n", "data: [DONE]\n\n"),
			map[string]any{"raw": `{"id":"1","n":2}`}, true},
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
