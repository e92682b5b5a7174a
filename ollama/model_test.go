package ollama_test

import (
	"testing"

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
		{"registry.ollama.ai/library/qwen3:0.6b", "registry.ollama.ai/library/qwen3:0.6b"},
		{"", ""},
		{"   ", ""},
	}
	for _, tt := range tests {
		if got := ollama.NormalizeModel(tt.in); got != tt.want {
			t.Errorf("NormalizeModel(%q) = %q, want %q", tt.in, got, tt.want)
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
	}
	for _, tt := range tests {
		got, err := ollama.ModelOf([]byte(tt.body))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ModelOf(%s) = %q, %v; want %q, err %v", tt.body, got, err, tt.want, tt.wantErr)
		}
	}
}
