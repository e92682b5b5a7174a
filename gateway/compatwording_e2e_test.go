package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// What foreman refuses itself, before Ollama sees the call, is what Ollama answers: a
// path or method its router does not take (plain text), and on /v1 a model Ollama's
// handler refuses (an "api_error", as the OpenAI layer passes that handler's errors on).
func TestE2ERefusalsMatchDirect(t *testing.T) {
	b := newE2EBundle(t, nil)
	ctx := testCtx(t, time.Minute)
	for _, c := range []struct{ method, path, body string }{
		{http.MethodPost, "/v1/systemone", `{}`},
		{http.MethodGet, "/v1/responses/resp_123", ``},
		{http.MethodPost, "/v1/messages/count_tokens", `{"model":"tiny-a","messages":[]}`},
		{http.MethodGet, "/api/nothing-here", ``},
		{http.MethodGet, "/api/chat", ``},
		{http.MethodPut, "/v1/models", ``},
		{http.MethodPost, "/v1/chat/completions", `{"model":"","messages":[{"role":"user","content":"x"}]}`},
		{http.MethodPost, "/v1/chat/completions", `{"model":"tiny-a:","messages":[{"role":"user","content":"x"}]}`},
		{http.MethodPost, "/v1/responses", `{"input":"x"}`},
		{http.MethodPost, "/v1/chat/completions", `{"model": "tiny-a",`},
		// The generate handler's routes take a blank name for one not found (404).
		{http.MethodPost, "/v1/completions", `{"model":"","prompt":"x"}`},
		{http.MethodPost, "/v1/images/generations", `{"model":" ","prompt":"x"}`},
		{http.MethodPost, "/api/generate", `{"prompt":"x"}`},
	} {
		send := func(base string) (int, string, []byte) {
			req, err := http.NewRequestWithContext(ctx, c.method, base+c.path, bytes.NewReader([]byte(c.body)))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", c.method, c.path, err)
			}
			defer resp.Body.Close()
			out, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, resp.Header.Get("Content-Type"), out
		}
		// (HEAD is refused where Ollama refuses it: see TestRouterMissAsOllama.)
		vs, vct, vbody := send(b.URL)
		ds, dct, dbody := send(b.Target)
		name := c.method + " " + c.path + " " + c.body
		if vs != ds {
			t.Errorf("%s: foreman %d %s, direct %d %s", name, vs, vbody, ds, dbody)
			continue
		}
		if dct == "text/plain" || strings.HasPrefix(c.path, "/api/") {
			if vct != dct || !bytes.Equal(vbody, dbody) {
				t.Errorf("%s: foreman %q %q, direct %q %q", name, vct, vbody, dct, dbody)
			}
			continue
		}
		var v, d struct {
			Error struct{ Message, Type string } `json:"error"`
		}
		if json.Unmarshal(vbody, &v) != nil || json.Unmarshal(dbody, &d) != nil || v.Error.Type != d.Error.Type {
			t.Errorf("%s: foreman %s, direct %s: error types differ", name, vbody, dbody)
		}
	}
}

// A model Ollama lacks is answered in Ollama's words on every route that names one,
// whether foreman refuses it from the model list or relays Ollama's answer: the status,
// Content-Type and bytes of Ollama's answer (the Anthropic request_id aside).
func TestE2EModelNotFoundMatchesDirect(t *testing.T) {
	b := newE2EBundle(t, nil)
	ctx := testCtx(t, time.Minute)
	reqID := regexp.MustCompile(`"req_[0-9a-f]{24}"`)
	for _, c := range []struct{ method, path, body string }{
		{http.MethodPost, "/api/chat", `{"model":"ghost","messages":[{"role":"user","content":"x"}]}`},
		{http.MethodPost, "/api/generate", `{"model":"ghost","prompt":"x","stream":false}`},
		{http.MethodPost, "/api/show", `{"model":"ghost"}`},
		{http.MethodPost, "/api/show", `{"name":"ghost"}`},
		{http.MethodPost, "/api/embed", `{"model":"ghost","input":"x"}`},
		{http.MethodPost, "/api/embeddings", `{"model":"ghost","prompt":"x"}`},
		{http.MethodDelete, "/api/delete", `{"model":"ghost"}`},
		{http.MethodPost, "/api/copy", `{"source":"ghost","destination":"ghost2"}`},
		{http.MethodPost, "/v1/chat/completions", `{"model":"ghost","messages":[{"role":"user","content":"x"}],"stream":true}`},
		{http.MethodPost, "/v1/completions", `{"model":"ghost","prompt":"x"}`},
		{http.MethodPost, "/v1/embeddings", `{"model":"ghost","input":"x"}`},
		{http.MethodPost, "/v1/responses", `{"model":"ghost","input":"x"}`},
		{http.MethodPost, "/v1/messages", `{"model":"ghost","max_tokens":4,"messages":[{"role":"user","content":"x"}]}`},
		{http.MethodPost, "/v1/images/generations", `{"model":"ghost","prompt":"x"}`},
		{http.MethodGet, "/v1/models/ghost", ``},
	} {
		send := func(base string) string {
			req, err := http.NewRequestWithContext(ctx, c.method, base+c.path, strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", c.method, c.path, err)
			}
			defer resp.Body.Close()
			out, _ := io.ReadAll(resp.Body)
			return fmt.Sprintf("%d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), reqID.ReplaceAll(out, []byte(`"req_ID"`)))
		}
		if got, want := send(b.URL), send(b.Target); got != want {
			t.Errorf("%s %s %s:\nforeman %s\ndirect  %s", c.method, c.path, c.body, got, want)
		}
	}
}
