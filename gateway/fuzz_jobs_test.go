package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// FuzzJobsMatchSyncRoutes holds POST /jobs to the sync routes' checks: for a body B (one
// JSON object) and a kind K, POST /jobs of {"kind":K, B's members} is refused at submit
// exactly when the sync route of K refuses B before it queues it, with the same status
// and the same words. The one refusal /jobs may add is of a body the sync route queues
// and the target then refuses with the same status (checkKindFields: a member of the
// wrong type would only fail the job after its wait).
//
// No worker runs: a sync call that passes its checks (the gateway's trace says its
// handler reached runSync, or the target got it relayed) is cut off there, its job
// canceled as its client's; a job /jobs accepts is canceled at once. So an input costs
// a few store writes, not a run.
// Run with: go test -run '^$' -fuzz '^FuzzJobsMatchSyncRoutes$' -fuzztime 60s ./gateway
func FuzzJobsMatchSyncRoutes(f *testing.F) {
	kindNumber := func(k broker.Kind) uint8 { return uint8(slices.Index(broker.Kinds, k)) }
	for _, c := range syncRefusals {
		f.Add(kindNumber(c.kind), []byte(c.body))
	}
	for _, c := range syncServed {
		f.Add(kindNumber(c.kind), []byte(c.body))
	}
	// Members of a wrong type, which /jobs refuses and the target would; model names
	// Ollama cannot parse, which its generate handler takes for not found.
	for _, c := range []struct {
		kind broker.Kind
		body string
	}{
		{broker.KindChat, `{"model":"tiny-a","messages":"hi"}`},
		{broker.KindOpenAIChat, `{"model":"tiny-a","messages":{}}`},
		{broker.KindAnthropicMessages, `{"model":"tiny-a","max_tokens":4,"messages":"hi"}`},
		{broker.KindGenerate, `{"model":"tiny-a","prompt":1}`},
		{broker.KindOpenAICompletion, `{"model":"tiny-a","prompt":["a"]}`},
		{broker.KindOpenAIResponses, `{"model":"tiny-a","input":1}`},
		{broker.KindEmbed, `{"model":"tiny-embed","input":1}`},
		{broker.KindEmbeddings, `{"model":"tiny-a","prompt":[1]}`},
		{broker.KindOpenAIImages, `{"model":"pic","prompt":3}`},
		{broker.KindOpenAIImageEdits, `{"model":"pic","prompt":"a cat","image":1}`},
		{broker.KindGenerate, `{"model":"a:b:c","prompt":"hi"}`},
		{broker.KindOpenAIImages, `{"model":"-x","prompt":"a cat"}`},
		{broker.KindChat, `{"MODEL":"tiny-a","model":null,` + hiMessages + `}`},
		{broker.KindEmbed, `{"model":7,"input":"x"}`},
		{broker.KindOpenAIEmbeddings, `{"model":"","input":"x"}`},
		{broker.KindGenerate, `{"prompt":"hi","stream":"no"}`},
		// A capability the model lacks: the sync route sends the call straight to the
		// target, POST /jobs refuses it at submit in the target's words.
		{broker.KindChat, `{"model":"tiny-a",` + hiMessages + `,"think":"low","tools":[{"type":"function"}]}`},
		{broker.KindChat, `{"model":"tiny-think","messages":[],"tools":[{}]}`},
		{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","suffix":"x","raw":true,"context":[1]}`},
		{broker.KindGenerate, `{"model":"tiny-think","prompt":"hi","think":"high","suffix":"x"}`},
		{broker.KindOpenAIChat, `{"model":"tiny-a",` + hiMessages + `,"reasoning":{"effort":"high"}}`},
		{broker.KindOpenAIChat, `{"model":"tiny-a",` + hiMessages + `,"reasoning_effort":"max","tools":[{}]}`},
	} {
		f.Add(kindNumber(c.kind), []byte(c.body))
	}
	models := append(syncServedModels(), ollamatest.Model{Name: "tiny-think", Thinking: true})
	b := newTestBundle(f, withFake(ollamatest.WithMaxTokens(8), ollamatest.WithModels(models...)))
	var (
		mu      sync.Mutex
		cutOff  context.CancelFunc // the sync call under way's
		reached bool               // it passed its checks
	)
	b.GW.trace = func(_, stage string, _ time.Time) {
		if stage != traceIn {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		reached = true
		if cutOff != nil {
			cutOff()
		}
	}
	serve := func(ctx context.Context, path string, body []byte) *httptest.ResponseRecorder {
		req := httptest.NewRequestWithContext(ctx, http.MethodPost, path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		b.GW.ServeHTTP(w, req)
		return w
	}
	f.Fuzz(func(t *testing.T, k uint8, body []byte) {
		kind := broker.Kinds[int(k)%len(broker.Kinds)]
		members, err := objectMembers(body)
		if err != nil {
			return // not one object: no members to give /jobs
		}
		for _, m := range members {
			if foremanFields[m.key] {
				return // /jobs would read it as its own
			}
		}
		job := encodeMembers(append([]member{{key: fieldKind, value: strconv.AppendQuote(nil, string(kind))}}, members...))

		ctx, cancel := context.WithTimeout(context.Background(), answerDeadline)
		defer cancel()
		syncCtx, stopSync := context.WithCancel(ctx)
		defer stopSync()
		mu.Lock()
		cutOff, reached = stopSync, false
		mu.Unlock()
		before := len(b.Fake.Calls())
		syncW := serve(syncCtx, kind.Path(), body)
		mu.Lock()
		queued := reached
		cutOff = nil
		mu.Unlock()
		relayed := callsTo(b, kind.Path(), before)
		jobs := serve(ctx, "/jobs", job)
		if ctx.Err() != nil {
			t.Fatalf("%s %q, POST /jobs %q: no answer within %s", kind.Path(), body, job, answerDeadline)
		}
		if jobs.Code >= 500 && jobs.Code != http.StatusServiceUnavailable {
			t.Fatalf("POST /jobs %q: %d %s", job, jobs.Code, jobs.Body)
		}
		if jobs.Code == http.StatusAccepted {
			var s submitted
			if err := json.Unmarshal(jobs.Body.Bytes(), &s); err != nil || s.JobID == "" {
				t.Fatalf("POST /jobs %q: 202 %s", job, jobs.Body)
			}
			// Canceled, so that the queue does not fill with jobs no worker runs.
			req := httptest.NewRequestWithContext(ctx, http.MethodDelete, "/jobs/"+s.JobID, nil)
			w := httptest.NewRecorder()
			b.GW.ServeHTTP(w, req)
			if w.Code != http.StatusOK {
				t.Fatalf("cancel job %s: %d %s", s.JobID, w.Code, w.Body)
			}
		}
		switch {
		case queued || relayed:
			if jobs.Code == http.StatusAccepted || jobs.Code == http.StatusServiceUnavailable {
				return
			}
			// Refused at submit, but served or queued by the sync route: only a body the
			// target refuses too, with the same status.
			status := syncW.Code
			if queued {
				status = post(t, ctx, b.Fake.URL, kind.Path(), body).Status
			}
			if status != jobs.Code {
				t.Fatalf("POST /jobs %q: %d %q, but %s takes %q (the target answers %d)",
					job, jobs.Code, refusalMessage(t, jobs.Body.Bytes()), kind.Path(), body, status)
			}
		case syncW.Code == http.StatusServiceUnavailable || jobs.Code == http.StatusServiceUnavailable:
			// Full or stopping: not a check of the body.
		case syncW.Code/100 != 4:
			t.Fatalf("%s %q: %d %s, neither refused nor queued", kind.Path(), body, syncW.Code, syncW.Body)
		case jobs.Code/100 != 4:
			t.Fatalf("POST /jobs %q: %d %s, but %s refuses %q before it queues: %d %s",
				job, jobs.Code, jobs.Body, kind.Path(), body, syncW.Code, syncW.Body)
		default:
			want, got := refusalMessage(t, syncW.Body.Bytes()), refusalMessage(t, jobs.Body.Bytes())
			if syncW.Code == http.StatusNotFound {
				// The model lookup, of a name no target has: /jobs words a model not found
				// as its own route does (the embedding routes as Ollama's embedding
				// handlers do), and refuses a name it could not queue before looking.
				return
			}
			if jobs.Code != syncW.Code || got != want {
				t.Fatalf("POST /jobs %q: %d %q, but %s refuses %q before it queues: %d %q",
					job, jobs.Code, got, kind.Path(), body, syncW.Code, want)
			}
		}
	})
}
