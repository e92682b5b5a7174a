package gateway

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// A path or method Ollama's router does not take is answered as that router (gin)
// answers it, in plain text, on Ollama's own paths: clients read the text as the
// message. An OpenAI-shaped error there was shown by ollama-js (its systemone, on
// /v1/systemone) as "[object Object]", and the Anthropic SDK (count_tokens) and the
// OpenAI SDK (responses.retrieve) gave it a type Ollama never sends. foreman's own paths
// keep their JSON errors.
func TestRouterMissAsOllama(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	for _, c := range []struct {
		method, path string
		status       int
		text, allow  string
	}{
		{http.MethodPost, "/v1/systemone", 404, "404 page not found", ""},
		{http.MethodGet, "/v1/responses/resp_123", 404, "404 page not found", ""},
		{http.MethodPost, "/v1/messages/count_tokens", 404, "404 page not found", ""},
		{http.MethodGet, "/api/nothing-here", 404, "404 page not found", ""},
		{http.MethodGet, "/api", 404, "404 page not found", ""},
		{http.MethodGet, "/api/chat", 405, "405 method not allowed", "POST"},
		{http.MethodPut, "/v1/models", 405, "405 method not allowed", "GET"},
		// HEAD on a GET route of Ollama's other than /, /api/version, /api/tags: it answered 200.
		{http.MethodHead, "/api/ps", 405, "", "GET"},
		{http.MethodHead, "/api/status", 405, "", "GET"},
		{http.MethodHead, "/v1/models", 405, "", "GET"},
		{http.MethodHead, "/v1/models/tiny-a", 405, "", "GET"},
		{http.MethodHead, "/api/experimental/aliases", 405, "", "GET, POST, DELETE"},
		{http.MethodPost, "/api/ps", 405, "405 method not allowed", "GET"},
		{http.MethodHead, "/api/ps/", 404, "", ""},
	} {
		resp, out := b.request(t, c.method, c.path, nil)
		if resp.StatusCode != c.status || string(out) != c.text || resp.Header.Get("Content-Type") != "text/plain" ||
			resp.Header.Get("Allow") != c.allow {
			t.Errorf("%s %s: %d %q (Content-Type %q, Allow %q), want %d %q as text/plain, Allow %q", c.method, c.path,
				resp.StatusCode, out, resp.Header.Get("Content-Type"), resp.Header.Get("Allow"), c.status, c.text, c.allow)
		}
	}
	resp, out := b.request(t, http.MethodGet, "/jobs/01J00000000000000000000000/nothing", nil)
	wantError(t, resp, out, http.StatusNotFound, "404 page not found")
}

// On /v1 Ollama's OpenAI layer words its own checks of a body (bad JSON, the image
// routes' members) "invalid_request_error", and passes on what its handler behind refuses
// (no model, a name it cannot take) as an "api_error", 400 or not. foreman refuses both
// before the target sees them, each with Ollama's type: the OpenAI SDKs hand it to their
// callers as error.type.
func TestV1RefusalTypesAsOllama(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	for _, c := range []struct{ path, body, typ, msg string }{
		{"/v1/chat/completions", `{"model":"","messages":[{"role":"user","content":"x"}]}`, "api_error", "model is required"},
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}]}`, "api_error", "model is required"},
		{"/v1/chat/completions", `{"model":"tiny-a:","messages":[{"role":"user","content":"x"}]}`, "api_error", "model is required"},
		{"/v1/chat/completions", `{"model":" tiny-a","messages":[{"role":"user","content":"x"}]}`, "api_error", "invalid model name"},
		{"/v1/responses", `{"model":"","input":"x"}`, "api_error", "model is required"},
		{"/v1/chat/completions", `{"model":" ","messages":[{"role":"user","content":"x"}]}`, "api_error", "model is required"},
		{"/v1/embeddings", `{"model":"","input":"x"}`, "api_error", "model is required"},
		{"/v1/chat/completions", `{"model": "tiny-a",`, "invalid_request_error", "invalid JSON body"},
		{"/v1/images/generations", `{"model":"x"}`, "invalid_request_error", "prompt is required"},
		{"/v1/images/generations", `{"prompt":"x"}`, "invalid_request_error", "model is required"},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		var e struct {
			Error struct{ Message, Type string } `json:"error"`
		}
		if got.Status != http.StatusBadRequest || json.Unmarshal(got.Body, &e) != nil || e.Error.Type != c.typ ||
			len(e.Error.Message) < len(c.msg) || e.Error.Message[:len(c.msg)] != c.msg {
			t.Errorf("%s %s: %d %s, want 400 with type %s, message %q...", c.path, c.body, got.Status, got.Body, c.typ, c.msg)
		}
	}
}

// An error goes out with the bytes Ollama writes it with, not only its status and words:
// SDKs hand the raw body to their callers (the AI SDK's APICallError.responseBody). Ollama's
// router (gin) writes its handlers' errors, and its OpenAI and Anthropic layers' own
// checks, as "application/json; charset=utf-8" with no newline; those layers' writer
// encodes the handler's errors behind them as "application/json" ending in a newline.
// That holds for foreman's own refusals and for a job's failure relayed from the target.
func TestErrorBytesAsOllama(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	const gin, enc = "application/json; charset=utf-8", "application/json"
	oai := func(typ, msg string) string {
		return `{"error":{"message":` + strconv.Quote(msg) + `,"type":"` + typ + `","param":null,"code":null}}`
	}
	reqID := regexp.MustCompile(`"req_[0-9A-Za-z]+"`)
	ant := func(typ, msg string) string {
		return `{"type":"error","error":{"type":"` + typ + `","message":` + strconv.Quote(msg) + `},"request_id":"req_ID"}`
	}
	for _, c := range []struct {
		path, body string
		status     int
		ctype      string
		want       string
	}{
		// foreman's refusals
		{"/api/chat", `notjson`, 400, gin, `{"error":"invalid JSON body: invalid character 'o' in literal null (expecting 'u')"}`},
		{"/api/chat", `{"model":"nope","messages":[]}`, 404, gin, `{"error":"model 'nope' not found"}`},
		{"/api/generate", `{"model":"nope","prompt":"x"}`, 404, gin, `{"error":"model 'nope' not found"}`},
		{"/api/embed", `{"model":"nope","input":"x"}`, 404, gin, `{"error":"model \"nope\" not found, try pulling it first"}`},
		{"/v1/chat/completions", `{"model":"nope","messages":[{"role":"user","content":"x"}]}`, 404, enc, oai("api_error", "model 'nope' not found") + "\n"},
		{"/v1/chat/completions", `{"model":"","messages":[{"role":"user","content":"x"}]}`, 400, enc, oai("api_error", "model is required") + "\n"},
		{"/v1/chat/completions", `notjson`, 400, gin, oai("invalid_request_error", "invalid JSON body: invalid character 'o' in literal null (expecting 'u')")},
		{"/v1/messages", `{"max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`, 400, gin, ant("invalid_request_error", "model is required")},
		// a blank name passes the Anthropic layer's check ("" only): its handler refuses it
		{"/v1/messages", `{"model":" ","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`, 400, enc, ant("invalid_request_error", "model is required") + "\n"},
		{"/v1/messages", `{"model":"nope","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`, 404, enc, ant("not_found_error", "model 'nope' not found") + "\n"},
		// the target's, relayed from a failed job
		{"/api/chat", `{"model":"tiny-embed","messages":[{"role":"user","content":"x"}]}`, 400, gin, `{"error":"\"tiny-embed\" does not support chat"}`},
		{"/v1/chat/completions", `{"model":"tiny-embed","messages":[{"role":"user","content":"x"}]}`, 400, enc, oai("api_error", `"tiny-embed" does not support chat`) + "\n"},
		{"/v1/responses", `{"model":"tiny-embed","input":"hi"}`, 400, enc, oai("api_error", `"tiny-embed" does not support chat`) + "\n"},
		{"/v1/responses", `{"model":"tiny-a","input":5}`, 400, gin, oai("invalid_request_error", "input must be a string or array: json: cannot unmarshal number into Go value of type []json.RawMessage")},
		{"/v1/messages", `{"model":"tiny-embed","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`, 400, enc, ant("invalid_request_error", `"tiny-embed" does not support chat`) + "\n"},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		body := reqID.ReplaceAllString(string(got.Body), `"req_ID"`)
		if got.Status != c.status || got.CType != c.ctype || body != c.want {
			t.Errorf("%s %s: %d %q %q\nwant %d %q %q", c.path, c.body, got.Status, got.CType, body, c.status, c.ctype, c.want)
		}
	}
}
