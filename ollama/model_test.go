package ollama_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/ollama/ollama/types/model"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

func TestNormalizeModel(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"llama3", "llama3:latest"},
		{"  llama3  ", "llama3:latest"},
		{"MODEL:Latest", "model:latest"},
		{"llama3:8b", "llama3:8b"},
		{"Llama3:8B", "llama3:8b"},
		{"a/b:c", "a/b:c"},
		{"registry.io:5000/ns/m", "registry.io:5000/ns/m:latest"},
		{"hf.co/Org/Model-GGUF:Q4_K_M", "hf.co/org/model-gguf:q4_k_m"},
		{"hf.co/Org/Model-GGUF", "hf.co/org/model-gguf:latest"},
		{"localhost:5000/lib/m", "localhost:5000/lib/m:latest"},
		// Ollama's defaults (registry.ollama.ai, library) are left out, as /api/tags lists
		// names: these are all one model.
		{"registry.ollama.ai/library/qwen3:0.6b", "qwen3:0.6b"},
		{"library/qwen3:0.6b", "qwen3:0.6b"},
		{"Library/Qwen3", "qwen3:latest"},
		{"https://registry.ollama.ai/library/qwen3", "qwen3:latest"},
		{"registry.ollama.ai/jmorgan/m", "jmorgan/m:latest"},
		// Names Ollama refuses keep the old form (they are refused or not found anyway).
		{"tiny-a:", "tiny-a:"},
		{"a/b/c/d", "a/b/c/d:latest"},
		{"a/b/c:/d", "a/b/c:/d:latest"}, // a tag is looked for in the last part only
		{"", ""},
		{"   ", ""},
	}
	for _, tt := range tests {
		if got := ollama.NormalizeModel(tt.in); got != tt.want {
			t.Errorf("NormalizeModel(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// ValidModelName is Ollama's own check: what it answers with 400 "model is required".
// Without a "/" the short form agrees with Ollama's parser for every name it takes.
func TestNormalizeModelShortFormIsTheParsers(t *testing.T) {
	t.Parallel()
	for _, n := range []string{"tiny-a", "Tiny-A", "qwen2.5:0.5b", "llama3.2:LATEST", "m_1.x-y:q4_K_M", "a", "x:y"} {
		p := model.ParseName(strings.ToLower(n))
		if !p.IsValid() {
			t.Fatalf("%q: the parser refuses it", n)
		}
		if got, want := ollama.NormalizeModel(n), p.DisplayShortest(); got != want {
			t.Errorf("NormalizeModel(%q) = %q, the parser says %q", n, got, want)
		}
	}
}

func BenchmarkNormalizeModel(b *testing.B) {
	for _, n := range []string{"qwen2.5-coder:7b", "hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M"} {
		b.Run(n, func(b *testing.B) {
			for b.Loop() {
				ollama.NormalizeModel(n)
			}
		})
	}
}

func TestValidModelName(t *testing.T) {
	t.Parallel()
	for _, n := range []string{"tiny-a", "library/tiny-a", "registry.ollama.ai/library/tiny-a:latest", "hf.co/u/m:Q4_K_M", "qwen2.5:0.5b"} {
		if !ollama.ValidModelName(n) {
			t.Errorf("%q refused", n)
		}
	}
	for _, n := range []string{"tiny-a:", ":latest", "tiny-a:latest:latest", "a/b/c/d", "m/", "bad name", ""} {
		if ollama.ValidModelName(n) {
			t.Errorf("%q taken", n)
		}
	}
}

func TestStreamRequested(t *testing.T) {
	t.Parallel()
	tests := []struct {
		body    string
		want    bool
		wantErr bool
	}{
		{`{"model":"m"}`, true, false},
		{`{"model":"m","stream":null}`, true, false},
		{`{"model":"m","stream":true}`, true, false},
		{`{"model":"m","stream":false}`, false, false},
		{`{}`, true, false},
		{`{"stream":"yes"}`, false, true},
		{`not json`, false, true},
	}
	for _, tt := range tests {
		got, err := ollama.StreamRequested([]byte(tt.body))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("StreamRequested(%s) = %v, %v; want %v, err %v", tt.body, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestStreamsByRoute(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		path, body string
		want       bool
	}{
		{"/api/chat", `{"model":"m"}`, true},
		{"/api/generate", `{"model":"m","stream":null}`, true},
		{"/api/chat", `{"model":"m","stream":false}`, false},
		{"/api/chat", `not json`, true},
		{"/v1/chat/completions", `{"model":"m"}`, false},
		{"/v1/completions", `{"model":"m","stream":true}`, true},
		{"/api/embed", `{"model":"m"}`, false},
		{"/v1/chat/completions", `not json`, false},
	} {
		if got := ollama.StreamsBody(tt.path, []byte(tt.body)); got != tt.want {
			t.Errorf("StreamsBody(%s, %s) = %v, want %v", tt.path, tt.body, got, tt.want)
		}
	}
}

func TestModelOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		body    string
		want    string
		wantErr bool
	}{
		{`{"model":"Llama3","messages":[]}`, "Llama3", false},
		{`{"name":"old-client"}`, "old-client", false},
		{`{"model":"a","name":"b"}`, "a", false},
		{`{}`, "", false},
		{`[1]`, "", true},
		{`{"model":"a"} 0`, "a", false}, // the first value, as Ollama's router reads it
	}
	for _, tt := range tests {
		got, err := ollama.ModelOf([]byte(tt.body))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ModelOf(%s) = %q, %v; want %q, err %v", tt.body, got, err, tt.want, tt.wantErr)
		}
	}
}

// StreamedBody asks for a stream whatever the body said, under any name encoding/json
// (and so Ollama) reads as "stream", and keeps every other member's value as it was.
func TestStreamedBody(t *testing.T) {
	tests := []struct{ name, in string }{
		{"false", `{"model":"m","stream":false}`},
		{"absent", `{"model":"m"}`},
		{"null", `{"model":"m","stream":null}`},
		{"other case", `{"model":"m","Stream":false}`},
		{"folded s", `{"model":"m","ſtream":false}`},
		{"escaped", `{"model":"m","str\u0065am":false}`},
		{"twice", `{"model":"m","stream":true,"STREAM":false}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := ollama.StreamedBody([]byte(tt.in), false)
			if err != nil {
				t.Fatal(err)
			}
			if !ollama.StreamsBody("/api/generate", out) {
				t.Errorf("%s: reads as not streamed", out)
			}
			var members map[string]json.RawMessage
			if err := json.Unmarshal(out, &members); err != nil {
				t.Fatal(err)
			}
			if len(members) != 2 || string(members["stream"]) != "true" || string(members["model"]) != `"m"` {
				t.Errorf("%s: want the model and stream:true alone", out)
			}
		})
	}
	// Values are kept as sent: numbers beyond float64, HTML characters, nested objects.
	in := `{"model":"m","stream":false,"options":{"seed":123456789012345678901234567890,"stop":["<a>&"]},"prompt":"x\u2028y"}`
	out, err := ollama.StreamedBody([]byte(in), false)
	if err != nil {
		t.Fatal(err)
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(out, &members); err != nil {
		t.Fatal(err)
	}
	if got := string(members["options"]); got != `{"seed":123456789012345678901234567890,"stop":["<a>&"]}` {
		t.Errorf("options became %s", got)
	}
	// Members read as one keep their order, so the last still counts: the same model.
	in = `{"model":"tiny-a","Model":"big-b","stream":false,"OPTIONS":{"num_ctx":1},"options":{"num_ctx":2}}`
	out, err = ollama.StreamedBody([]byte(in), false)
	if err != nil {
		t.Fatal(err)
	}
	if before, after := modelOf(t, in), modelOf(t, string(out)); before != "big-b" || after != before {
		t.Errorf("%s: model %q, want %q as before", out, after, before)
	}
	if want := `{"model":"tiny-a","Model":"big-b","OPTIONS":{"num_ctx":1},"options":{"num_ctx":2},"stream":true}`; string(out) != want {
		t.Errorf("got %s, want %s", out, want)
	}
	// An OpenAI-compatible body asks for the usage too, whatever stream options it had.
	out, err = ollama.StreamedBody([]byte(`{"model":"m","Stream_Options":{"include_usage":false},"messages":[]}`), true)
	if want := `{"model":"m","messages":[],"stream_options":{"include_usage":true},"stream":true}`; err != nil || string(out) != want {
		t.Errorf("got %s (%v), want %s", out, err, want)
	}
	for _, bad := range []string{``, `null`, `[]`, `"s"`, `{"model":`, `{"model":"m"} {}`} {
		if out, err := ollama.StreamedBody([]byte(bad), false); err == nil {
			t.Errorf("%q: got %s, want an error", bad, out)
		}
	}
}

func modelOf(t *testing.T, body string) string {
	t.Helper()
	m, err := ollama.ModelOf([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return m
}
