package worker_test

import (
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// streamedResult runs a job of kind with body on a fresh worker and returns its result
// decoded, its bytes, and the non-streamed answer to the same body on path.
func streamedResult(t *testing.T, kind broker.Kind, path, body string) (got map[string]any, raw []byte, want map[string]any) {
	t.Helper()
	tb := setup(t)
	tb.start(t, worker.Config{})
	j := tb.submit(t, "tiny-a", kind, body)
	rec := tb.waitState(t, j.ID, broker.StateDone)
	if err := json.Unmarshal(rec.Result, &got); err != nil {
		t.Fatalf("result %s: %v", rec.Result, err)
	}
	return got, rec.Result, tb.nonStreamed(t, path, body)
}

// nonStreamed asks the fake, directly, for the answer to body on path with stream:false,
// decoded.
func (tb *testBundle) nonStreamed(t *testing.T, path, body string) map[string]any {
	t.Helper()
	var req map[string]any
	if err := json.Unmarshal([]byte(body), &req); err != nil {
		t.Fatal(err)
	}
	req["stream"] = false
	delete(req, "stream_options")
	b, _ := json.Marshal(req)
	resp, err := http.Post(tb.fake.URL+path, "application/json", strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %d %s %v", path, resp.StatusCode, data, err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("%s: %s: %v", path, data, err)
	}
	return m
}

// An async job asking the OpenAI routes for a stream keeps as its result the answer the
// same request without stream gets: the whole text in one chat.completion (or
// text_completion), with the usage when the stream carried it.
func TestStreamedOpenAIResultIsTheNonStreamedAnswer(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		kind  broker.Kind
		path  string
		body  string
		usage bool
	}{
		{"chat", broker.KindOpenAIChat, "/v1/chat/completions",
			`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":true}`, false},
		{"chat with usage", broker.KindOpenAIChat, "/v1/chat/completions",
			`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}`, true},
		{"completion", broker.KindOpenAICompletion, "/v1/completions",
			`{"model":"tiny-a","prompt":"hi","stream":true}`, false},
		{"completion with usage", broker.KindOpenAICompletion, "/v1/completions",
			`{"model":"tiny-a","prompt":"hi","stream":true,"stream_options":{"include_usage":true}}`, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, raw, want := streamedResult(t, c.kind, c.path, c.body)
			if !c.usage {
				delete(want, "usage") // a stream without it cannot tell
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("result\n%s\nwant the non-streamed answer\n%v", raw, want)
			}
		})
	}
}

// A streamed chat or generate job keeps as its result the answer the same request with
// stream:false gets, logprobs included: Ollama joins every frame's.
func TestStreamedNativeResultIsTheNonStreamedAnswer(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		kind broker.Kind
		path string
		body string
	}{
		{"chat", broker.KindChat, "/api/chat",
			`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"logprobs":true}`},
		{"generate", broker.KindGenerate, "/api/generate",
			`{"model":"tiny-a","prompt":"hi","logprobs":true}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, raw, want := streamedResult(t, c.kind, c.path, c.body)
			if lp, _ := want["logprobs"].([]any); len(lp) < 2 {
				t.Fatalf("the non-streamed answer has logprobs %v, want one a token", want["logprobs"])
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("result\n%s\nwant the non-streamed answer\n%v", raw, want)
			}
		})
	}
}
