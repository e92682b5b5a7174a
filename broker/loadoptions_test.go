package broker

import (
	"encoding/json"
	"testing"
)

// Each request's options map to the runner Ollama 0.17.4 loads for it (api/types.go
// Options.FromMap, server/sched.go GetRunner and needsReload): requests with one key share
// a runner, requests with different keys reload.
func TestLoadOptionsKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, body, want string
	}{
		{"no options", `{}`, ""},
		{"null options", `{"options":null}`, ""},
		{"sampling options only", `{"options":{"temperature":0.2,"seed":1}}`, ""},
		{"num_ctx set", `{"options":{"num_ctx":256}}`, "num_ctx=256;"},
		{"num_ctx 0 is clamped to 4, not the default", `{"options":{"num_ctx":0}}`, "num_ctx=4;"},
		{"num_ctx below 4 is clamped", `{"options":{"num_ctx":3}}`, "num_ctx=4;"},
		{"negative num_ctx is clamped", `{"options":{"num_ctx":-100}}`, "num_ctx=4;"},
		{"fractional num_ctx is truncated", `{"options":{"num_ctx":256.9}}`, "num_ctx=256;"},
		{"fractional num_ctx below 1 is 0, clamped", `{"options":{"num_ctx":0.5}}`, "num_ctx=4;"},
		{"null num_ctx leaves the default", `{"options":{"num_ctx":null}}`, ""},
		{"num_ctx as a string is refused", `{"options":{"num_ctx":"256"}}`, ""},
		{"a refused option loads nothing", `{"options":{"num_ctx":256,"use_mmap":1}}`, ""},
		{"num_batch default", `{"options":{"num_batch":512}}`, ""},
		{"num_batch set", `{"options":{"num_batch":256}}`, "num_batch=256;"},
		{"num_gpu negative is not compared", `{"options":{"num_gpu":-1}}`, ""},
		{"num_gpu 0", `{"options":{"num_gpu":0}}`, "num_gpu=0;"},
		{"main_gpu default", `{"options":{"main_gpu":0}}`, ""},
		{"main_gpu set", `{"options":{"main_gpu":1}}`, "main_gpu=1;"},
		{"num_thread default", `{"options":{"num_thread":0}}`, ""},
		{"num_thread fraction is 0", `{"options":{"num_thread":0.7}}`, ""},
		{"num_thread set", `{"options":{"num_thread":4}}`, "num_thread=4;"},
		{"use_mmap false", `{"options":{"use_mmap":false}}`, "use_mmap=false;"},
		{"use_mmap true differs from unset", `{"options":{"use_mmap":true}}`, "use_mmap=true;"},
		{"several, in name order", `{"options":{"use_mmap":true,"num_ctx":1024.2,"num_batch":512,"num_gpu":-3}}`, "num_ctx=1024;use_mmap=true;"},
		{"repeated options add up", `{"options":{"num_ctx":256},"options":{"num_batch":8}}`, "num_batch=8;num_ctx=256;"},
		{"options not an object", `{"options":[1]}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var req struct {
				Options LoadOptions `json:"options"`
			}
			if err := json.Unmarshal([]byte(tt.body), &req); err != nil {
				t.Fatal(err)
			}
			if got := req.Options.key(); got != tt.want {
				t.Fatalf("%s: key %q, want %q", tt.body, got, tt.want)
			}
			wantTok := DefaultLoadOptions
			if tt.want != "" {
				wantTok = "not " + DefaultLoadOptions
			}
			if got := LoadOptionsToken([]byte(tt.body)); (got == DefaultLoadOptions) != (wantTok == DefaultLoadOptions) {
				t.Fatalf("%s: token %q", tt.body, got)
			}
		})
	}
}

// The OpenAI routes read no "options": their jobs run on the default runner.
func TestKeyOfOpenAIIgnoresOptions(t *testing.T) {
	t.Parallel()
	body := []byte(`{"model":"m","options":{"num_ctx":256}}`)
	for _, kind := range []Kind{KindOpenAIChat, KindOpenAICompletion} {
		j := &Job{Model: "m", Kind: kind, LoadOptions: LoadOptionsToken(body)}
		for _, jj := range []*Job{j, {Model: "m", Kind: kind}} {
			k, err := KeyOf(jj, body)
			if err != nil {
				t.Fatal(err)
			}
			if k.Opts != DefaultLoadOptions {
				t.Fatalf("%s: load options %q, want %q", kind, k.Opts, DefaultLoadOptions)
			}
		}
	}
	for _, kind := range []Kind{KindChat, KindGenerate, KindEmbed} {
		if k, err := KeyOf(&Job{Model: "m", Kind: kind}, body); err != nil || k.Opts == DefaultLoadOptions {
			t.Fatalf("%s: load options %q (%v), want the request's", kind, k.Opts, err)
		}
	}
}
