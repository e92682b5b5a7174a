package ollamatest_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// The fake refuses what Ollama 0.17.4 refuses, in its order, status, media type and
// words: each body below was measured against the real one (TestCompatShapesMatchRealOllama
// sends several of them to both).
func TestRefusalsMatchOllama(t *testing.T) {
	t.Parallel()
	s := ollamatest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const gin, enc = "application/json; charset=utf-8", "application/json"
	oai := func(typ, msg string) string {
		return `{"error":{"message":` + mustJSON(msg) + `,"type":"` + typ + `","param":null,"code":null}}`
	}
	tooShort := oai("invalid_request_error", "[] is too short - 'messages'")
	const topLogprobs = `{"error":"top_logprobs must be between 0 and 20"}`
	const rawRefusal = `{"error":"raw mode does not support template, system, or context"}`
	badFormat := oai("invalid_request_error", "Invalid value for 'encoding_format' = bad. Supported values: ['float', 'base64'].")
	for _, tt := range []struct {
		path, body string
		code       int
		ctype      string
		want       string
	}{
		// The generate handler answers a name it cannot parse, blank too, 404; the chat
		// handler 400 "model is required".
		{"/api/generate", `{"prompt":"hi"}`, 404, gin, `{"error":"model '' not found"}`},
		{"/api/generate", `{"model":"","prompt":"hi"}`, 404, gin, `{"error":"model '' not found"}`},
		{"/api/generate", `{"model":"  "}`, 404, gin, `{"error":"model '  ' not found"}`},
		{"/api/generate", `{"model":"bad name!","prompt":"hi"}`, 404, gin, `{"error":"model 'bad name!' not found"}`},
		{"/api/generate", "null x", 404, gin, `{"error":"model '' not found"}`},
		{"/api/chat", `{"model":"","messages":[]}`, 400, gin, `{"error":"model is required"}`},
		{"/api/chat", `{"model":"bad name!","messages":[]}`, 400, gin, `{"error":"model is required"}`},
		// A capability the model lacks, refused before a runner is scheduled: thinking
		// (the name as asked), then tools or insert (scheduleRunner's, the name in full);
		// on generate a think string first, whatever the model (no harmony parser).
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"x"}],"think":true,"tools":[{"type":"function","function":{"name":"f"}}]}`, 400, gin, `{"error":"\"tiny-a\" does not support thinking"}`},
		{"/api/chat", `{"model":"tiny-a","messages":[],"tools":[{"type":"function","function":{"name":"f"}}]}`, 400, gin, `{"error":"registry.ollama.ai/library/tiny-a:latest does not support tools"}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"x","suffix":"y"}`, 400, gin, `{"error":"registry.ollama.ai/library/tiny-a:latest does not support insert"}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"x","think":"high"}`, 400, gin, `{"error":"think value \"high\" is not supported for this model"}`},
		// Raw mode with a template, system or context (case-insensitive names, as the
		// decoder matches them), after the model's 404 and before what the model can do:
		// a think string, insert, completion itself (an embedding model).
		{"/api/generate", `{"model":"tiny-a","prompt":"x","raw":true,"system":"s","think":"high","suffix":"y"}`, 400, gin, rawRefusal},
		{"/api/generate", `{"model":"tiny-a","prompt":"x","RAW":true,"Template":"t"}`, 400, gin, rawRefusal},
		{"/api/generate", `{"model":"tiny-a","prompt":"x","raw":true,"context":[1]}`, 400, gin, rawRefusal},
		{"/api/generate", `{"model":"tiny-embed","prompt":"x","raw":true,"system":"s"}`, 400, gin, rawRefusal},
		{"/api/generate", `{"model":"ghost","prompt":"x","raw":true,"system":"s"}`, 404, gin, `{"error":"model 'ghost' not found"}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"x","raw":true,"system":"","context":[],"suffix":"y"}`, 400, gin,
			`{"error":"registry.ollama.ai/library/tiny-a:latest does not support insert"}`},
		{"/api/generate", `{"model":"tiny-embed","prompt":"x","raw":false,"system":"s"}`, 400, gin, `{"error":"\"tiny-embed\" does not support generate"}`},
		// The OpenAI chat layer refuses a reasoning value it does not know (after its
		// messages check, before the handler looks at the model); the handler then a
		// reasoning effort on a model without thinking, then tools.
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"x"}],"reasoning_effort":"max","top_logprobs":21}`, 400, gin,
			oai("invalid_request_error", `invalid reasoning value: 'max' (must be "high", "medium", "low", or "none")`)},
		{"/v1/chat/completions", `{"model":"ghost","messages":[{"role":"user","content":"x"}],"reasoning":{"effort":"x"},"reasoning_effort":"low"}`, 400, gin,
			oai("invalid_request_error", `invalid reasoning value: 'x' (must be "high", "medium", "low", or "none")`)},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"x"}],"reasoning_effort":"high","tools":[{"type":"function","function":{"name":"f"}}]}`, 400, enc,
			oai("api_error", `"tiny-a" does not support thinking`) + "\n"},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"x"}],"reasoning":{"effort":"low"}}`, 400, enc,
			oai("api_error", `"tiny-a" does not support thinking`) + "\n"},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"x"}],"reasoning_effort":"none","tools":[{"type":"function","function":{"name":"f"}}]}`, 400, enc,
			oai("api_error", "registry.ollama.ai/library/tiny-a:latest does not support tools") + "\n"},
		{"/v1/completions", `{"prompt":"x"}`, 404, enc, oai("api_error", "model '' not found") + "\n"},
		{"/v1/completions", `{"model":"bad name!","prompt":"x"}`, 404, enc, oai("api_error", "model 'bad name!' not found") + "\n"},
		{"/v1/completions", `{"model":"tiny-embed","prompt":"x"}`, 400, enc, oai("api_error", `"tiny-embed" does not support generate`) + "\n"},
		{"/v1/chat/completions", `{"model":"bad name!","messages":[{"role":"user","content":"x"}]}`, 400, enc, oai("api_error", "model is required") + "\n"},
		// The OpenAI chat layer refuses no messages before anything else.
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[]}`, 400, gin, tooShort},
		{"/v1/chat/completions", `{"model":"tiny-a"}`, 400, gin, tooShort},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":null}`, 400, gin, tooShort},
		{"/v1/chat/completions", `{"messages":[]}`, 400, gin, tooShort},
		{"/v1/chat/completions", `null`, 400, gin, tooShort},
		// The OpenAI embeddings layer checks encoding_format, then the input, then its
		// handler the model.
		{"/v1/embeddings", `{"model":"tiny-embed","input":"x","encoding_format":"bad"}`, 400, gin, badFormat},
		{"/v1/embeddings", `{"input":"x","encoding_format":"bad"}`, 400, gin, badFormat},
		{"/v1/embeddings", `{"encoding_format":"bad"}`, 400, gin, badFormat},
		{"/v1/embeddings", `{"model":"tiny-embed"}`, 400, gin, oai("invalid_request_error", "invalid input")},
		{"/v1/embeddings", `{"model":"tiny-embed","input":[]}`, 400, gin, oai("invalid_request_error", "invalid input")},
		{"/v1/embeddings", `{"model":"tiny-embed","input":5}`, 400, enc, oai("api_error", "invalid input type") + "\n"},
		// The chat and generate handlers refuse a top_logprobs outside 0..20 first of all
		// (a null after a value leaves their int as it was); the OpenAI layers pass on
		// /v1/chat/completions' top_logprobs, after their messages check, and
		// /v1/completions' logprobs when positive.
		{"/api/generate", `{"model":"tiny-a","prompt":"x","top_logprobs":21}`, 400, gin, topLogprobs},
		{"/api/generate", `{"model":"bad name!","prompt":"x","top_logprobs":-1}`, 400, gin, topLogprobs},
		{"/api/generate", `{"model":"tiny-a","prompt":"x","top_logprobs":21,"top_logprobs":null}`, 400, gin, topLogprobs},
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"x"}],"top_logprobs":21}`, 400, gin, topLogprobs},
		{"/api/chat", `{"messages":[],"top_logprobs":21}`, 400, gin, topLogprobs},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"x"}],"top_logprobs":21}`, 400, enc, oai("api_error", "top_logprobs must be between 0 and 20") + "\n"},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[],"top_logprobs":21}`, 400, gin, tooShort},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":21}`, 400, enc, oai("api_error", "top_logprobs must be between 0 and 20") + "\n"},
		{"/v1/completions", `{"model":"tiny-embed","prompt":"x","logprobs":21}`, 400, enc, oai("api_error", "top_logprobs must be between 0 and 20") + "\n"},
	} {
		a := mustPost(t, ctx, s.URL, tt.path, tt.body)
		if a.code != tt.code || a.header.Get("Content-Type") != tt.ctype || a.body != tt.want {
			t.Errorf("%s %s: %d %q %q\nwant %d %q %q", tt.path, tt.body, a.code, a.header.Get("Content-Type"), a.body, tt.code, tt.ctype, tt.want)
		}
	}
}

// An injected FailStatus on /v1/responses and /v1/messages carries the stream headers
// when the body asks for a stream as Ollama's middleware reads it: the first JSON value
// (what follows it ignored), "stream" a bool on /v1/messages (a later null leaves it
// true) and a *bool on /v1/responses (a later null clears it).
func TestFailStatusStreamHeadersReadAsOllama(t *testing.T) {
	t.Parallel()
	s := ollamatest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const msg = `"model":"tiny-a","max_tokens":4,"messages":[{"role":"user","content":"hi"}]`
	for _, tt := range []struct {
		path, body string
		streamed   bool
	}{
		{"/v1/messages", `{` + msg + `,"stream":true}`, true},
		{"/v1/messages", `{` + msg + `,"stream":true} x`, true},
		{"/v1/messages", `{` + msg + `,"stream":true}{"stream":false}`, true},
		{"/v1/messages", `{` + msg + `,"stream":true,"stream":null}`, true},
		{"/v1/messages", `{` + msg + `}`, false},
		{"/v1/responses", `{"model":"tiny-a","input":"hi","stream":true} x`, true},
		{"/v1/responses", `{"model":"tiny-a","input":"hi","stream":true,"stream":null}`, false},
	} {
		s.FailNext(1, ollamatest.FailStatus(503, "server busy"))
		a := mustPost(t, ctx, s.URL, tt.path, tt.body)
		if got := a.header.Get("Cache-Control") == "no-cache"; a.code != 503 || got != tt.streamed {
			t.Errorf("%s %s: %d, stream headers %v, want %v", tt.path, tt.body, a.code, got, tt.streamed)
		}
	}
}

// A model with Tools lists "tools" in /api/show and runs a chat that holds tools, native
// and on /v1/chat/completions, where one without is refused (TestRefusalsMatchOllama).
func TestToolsModelRunsTools(t *testing.T) {
	t.Parallel()
	s := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "tooler", Tools: true}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if a := mustPost(t, ctx, s.URL, "/api/show", `{"model":"tooler"}`); a.code != 200 || !strings.Contains(a.body, `"capabilities":["completion","tools"]`) {
		t.Errorf("/api/show: %d %s", a.code, a.body)
	}
	const msgs = `"messages":[{"role":"user","content":"x"}],"stream":false,"tools":[{"type":"function","function":{"name":"f"}}]`
	for _, path := range []string{"/api/chat", "/v1/chat/completions"} {
		if a := mustPost(t, ctx, s.URL, path, `{"model":"tooler",`+msgs+`}`); a.code != 200 {
			t.Errorf("%s: %d %s", path, a.code, a.body)
		}
	}
}
