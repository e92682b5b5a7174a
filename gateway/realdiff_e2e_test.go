package gateway

import (
	"bytes"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// Calls whose answers foreman built or refused otherwise than Ollama, each sent to foreman
// and to Ollama directly: the status, Content-Type and body (ids and clocks aside) are
// Ollama's. A body with more after its object is answered as the object (Ollama reads
// the first JSON value); a non-streamed OpenAI call's unreadable stream_options is
// Ollama's 400; a non-streamed Anthropic message with no content block has
// "content":null (this system prompt makes tiny-a's first tokens empty text); a queued
// message's refusal is framed as the Anthropic layer or its handler frames it.
func TestE2EAnswersMatchDirect(t *testing.T) {
	b := newE2EBundle(t, nil)
	ctx := testCtx(t, 2*time.Minute)
	b.warm(t, ctx, "tiny-a")
	volatile := regexp.MustCompile(`"(id|created|created_at|completed_at|request_id|total_duration|load_duration|prompt_eval_duration|eval_duration)":("[^"]*"|[0-9]+)`)
	for _, c := range []struct{ path, body string }{
		{"/api/generate", `{"model":"tiny-a","prompt":"x","stream":false,"options":{"num_predict":2}} garbage`},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"x"}],"max_tokens":2,"temperature":0}]`},
		{"/api/show", `{"model":"tiny-a"} x`},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"temperature":0,"stream_options":"x"}`},
		{"/v1/completions", `{"model":"tiny-a","prompt":"hi","max_tokens":3,"temperature":0,"stream_options":{"include_usage":"yes"}}`},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":3,"messages":[{"role":"user","content":"hi"}],"temperature":0,"system":"be brief"}`},
		// Queued, and refused by Ollama's Anthropic layer (gin's framing) or by its
		// handler (its writer's json.Encoder, a newline after the object).
		{"/v1/messages", `{"model":"tiny-a","max_tokens":"x","messages":[{"role":"user","content":"hi"}]}`},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":4,"stream":true,"messages":[{"role":"user","content":5}]}`},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":4,"messages":[{"role":"user","content":[{"type":"image"}]}]}`},
		{"/v1/messages", `{"model":"tiny-embed","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`},
		// Options that are no object: the decoder's 400, before any other check.
		{"/api/generate", `{"model":"tiny-a","prompt":"x","top_logprobs":50,"options":"x"}`},
		{"/api/chat", `{"model":"ghost","messages":[],"options":{"num_ctx":8},"options":[1]}`},
		{"/api/embed", `{"model":"tiny-embed","input":"x","options":5}`},
		{"/api/embeddings", `{"model":"tiny-a","prompt":"x","options":true}`},
		// Other members of a type the decoder refuses, its 400 before any other check too.
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"x"}],"tools":"x"}`},
		{"/api/chat", `{"model":"ghost","messages":"hi"}`},
		{"/api/generate", `{"model":"ghost","prompt":"x","think":"weird"}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"x","top_logprobs":50,"keep_alive":[1]}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"x","images":"x"}`},
		// A stream that is no boolean: the embedding routes (queued on a chat model) have
		// none and ignore it.
		{"/api/embed", `{"model":"tiny-a","input":"x","stream":"yes"}`},
		{"/v1/embeddings", `{"model":"tiny-a","input":"x","stream":"yes"}`},
		// A blob digest Ollama cannot take: refused before it reaches Ollama, in its words.
		{"/api/blobs/sha256:00", `x`},
	} {
		send := func(base string) (int, string, string) {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+c.path, bytes.NewReader([]byte(c.body)))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", c.path, err)
			}
			defer resp.Body.Close()
			out, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, resp.Header.Get("Content-Type"), sortedParameters(volatile.ReplaceAllString(string(out), `"$1":0`))
		}
		vs, vct, vbody := send(b.URL)
		ds, dct, dbody := send(b.Target)
		if vs != ds || vct != dct || vbody != dbody {
			t.Errorf("%s %s:\nforeman %d %q %s\ndirect  %d %q %s", c.path, c.body, vs, vct, vbody, ds, dct, dbody)
		}
	}
}

// mapOrdered are /api/show's members whose lines come in the order of a Go map Ollama
// ranges over (the modelfile's PARAMETER lines, "parameters"), another from call to call.
var mapOrdered = regexp.MustCompile(`"(modelfile|parameters)":"((?:[^"\\]|\\.)*)"`)

// sortedParameters puts the lines of an /api/show answer's modelfile and parameters in
// order.
func sortedParameters(body string) string {
	return mapOrdered.ReplaceAllStringFunc(body, func(m string) string {
		v := mapOrdered.FindStringSubmatch(m)
		lines := strings.Split(v[2], `\n`)
		slices.Sort(lines)
		return `"` + v[1] + `":"` + strings.Join(lines, `\n`) + `"`
	})
}
