package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// A chat or generate call for the real Ollama's embedding model, or asking its chat model
// for a capability it lacks, is answered as Ollama answers it (its handler's 400, before any runner is scheduled), on every route and
// with other faults in the body too (Ollama's order decides which one it names), with
// no job made and while the worker runs another job; POST /jobs refuses such a job at
// submit. Measured before: 11 s for that 400 behind one long job, 28 ms from Ollama.
func TestE2ECompletionOnEmbeddingModelAsDirect(t *testing.T) {
	b := newE2EBundle(t, nil)
	ctx := testCtx(t, 2*time.Minute)
	b.warm(t, ctx, "tiny-a")
	volatile := regexp.MustCompile(`"(request_id)":"[^"]*"`)
	calls := append([]struct{ path, body string }{
		// Faults Ollama finds before the capability, or after it. (Options of a type Ollama
		// refuses are foreman's 400 first, as before: Ollama reads them after the capability.)
		{"/api/chat", `{"model":"tiny-embed","messages":[{"role":"user","content":"hi"}],"think":true}`},
		{"/api/generate", `{"model":"tiny-embed","prompt":"hi","raw":true,"system":"s"}`},
		{"/api/chat", `{"model":"tiny-embed","messages":[{"role":"user","content":"hi"}],"format":"yaml"}`},
		{"/v1/chat/completions", `{"model":"tiny-embed","messages":[{"role":"user","content":"hi"}],"reasoning_effort":"high"}`},
		{"/v1/messages", `{"model":"tiny-embed","max_tokens":4,"messages":[{"role":"user","content":[{"type":"image"}]}]}`},
		{"/api/chat", `{"model":"tiny-embed","messages":[]}`},
		// A capability the chat model lacks (ADR-0129): thinking, tools, insert.
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"think":true}`},
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"stream":false}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","suffix":"end"}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","think":"high"}`},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}`},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"reasoning_effort":"low","stream":true}`},
		// Raw mode with a template, system or context, on a model that completes
		// (ADR-0129, amended): refused before any capability.
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","raw":true,"system":"s"}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","Raw":true,"template":"{{ .Prompt }}","stream":false}`},
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","raw":true,"context":[1,2],"think":"high","suffix":"end"}`},
		{"/api/generate", `{"model":"tiny-a","raw":true,"system":"s","keep_alive":"5m"}`}, // a load, not an unload
	}, noCompletionCalls...)
	send := func(base, path, body string) rawResponse {
		r := post(t, ctx, base, path, []byte(body))
		r.Body = volatile.ReplaceAll(r.Body, []byte(`"$1":""`))
		return r
	}
	check := func() {
		t.Helper()
		for _, c := range calls {
			got, want := send(b.URL, c.path, c.body), send(b.Target, c.path, c.body)
			if want.Status != http.StatusBadRequest {
				t.Fatalf("%s %s: Ollama answered %d %s, want a 400", c.path, c.body, want.Status, want.Body)
			}
			if got.Status != want.Status || got.CType != want.CType || !bytes.Equal(got.Body, want.Body) {
				t.Errorf("%s %s:\nforeman %d %q %s\ndirect  %d %q %s", c.path, c.body, got.Status, got.CType, got.Body, want.Status, want.CType, want.Body)
			}
			if id := got.Header.Get(HeaderJobID); id != "" {
				t.Fatalf("%s %s: queued as job %s", c.path, c.body, id)
			}
		}
	}
	check()

	// While the worker runs a long job, at once.
	long := post(t, ctx, b.URL, "/jobs", []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"go on"}],"options":{"temperature":0.8,"seed":7,"num_predict":20000}}`))
	var sub struct {
		ID string `json:"job_id"`
	}
	if err := json.Unmarshal(long.Body, &sub); err != nil || long.Status != http.StatusAccepted {
		t.Fatalf("long job: %d %s", long.Status, long.Body)
	}
	waitRecord(t, ctx, b.Store, sub.ID, func(j *broker.Job) bool { return j.State == broker.StateWorking })
	check()
	for _, c := range []struct{ body, want string }{
		{`{"model":"tiny-embed","messages":[{"role":"user","content":"hi"}]}`, `"tiny-embed" does not support chat`},
		{`{"kind":"generate","model":"tiny-embed","prompt":"hi"}`, `"tiny-embed" does not support generate`},
	} {
		got := post(t, ctx, b.URL, "/jobs", []byte(c.body))
		if got.Status != http.StatusBadRequest || errorBody(t, got.Body) != c.want {
			t.Errorf("POST /jobs %s: %d %s, want 400 %s", c.body, got.Status, got.Body, c.want)
		}
	}
	// A job asking tiny-a for a capability it lacks, or for raw mode with a system or
	// context: refused at submit in the words the real Ollama gives the same body on its
	// route (ADR-0129, amended).
	for _, c := range []struct {
		kind broker.Kind
		body string
	}{
		{broker.KindChat, `"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"think":true}`},
		{broker.KindChat, `"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}`},
		{broker.KindGenerate, `"model":"tiny-a","prompt":"hi","suffix":"end"}`},
		{broker.KindGenerate, `"model":"tiny-a","prompt":"hi","think":"high"}`},
		{broker.KindOpenAIChat, `"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}`},
		{broker.KindOpenAIChat, `"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"reasoning_effort":"low"}`},
		{broker.KindGenerate, `"model":"tiny-a","prompt":"hi","raw":true,"system":"s"}`},
		{broker.KindGenerate, `"model":"tiny-embed","prompt":"hi","raw":true,"context":[1]}`},
		{broker.KindGenerate, `"model":"tiny-embed","prompt":"hi","raw":true}`},
		{broker.KindGenerate, `"model":"tiny-a","raw":true,"system":"s","keep_alive":"5m"}`},
	} {
		want := send(b.Target, c.kind.Path(), "{"+c.body)
		if want.Status != http.StatusBadRequest {
			t.Fatalf("%s {%s: Ollama answered %d %s, want a 400", c.kind.Path(), c.body, want.Status, want.Body)
		}
		job := fmt.Sprintf(`{"kind":%q,%s`, c.kind, c.body)
		got := post(t, ctx, b.URL, "/jobs", []byte(job))
		if got.Status != http.StatusBadRequest || errorBody(t, got.Body) != errorBody(t, want.Body) {
			t.Errorf("POST /jobs %s: %d %s, want 400 %s", job, got.Status, got.Body, errorBody(t, want.Body))
		}
	}
	if j, _, err := b.Store.Get(ctx, sub.ID); err != nil || j.State != broker.StateWorking {
		t.Errorf("the long job ended before the calls were answered: %+v %v", j, err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, b.URL+"/jobs/"+sub.ID, nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	waitRecord(t, ctx, b.Store, sub.ID, func(j *broker.Job) bool { return j.State.Terminal() })
}
