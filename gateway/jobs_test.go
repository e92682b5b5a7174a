package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// submitted is POST /jobs's answer.
type submitted struct {
	JobID string `json:"job_id"`
}

// jobsSubmit posts a job and requires 202; it returns the job id.
func jobsSubmit(t *testing.T, b *testBundle, body string, hdr ...string) string {
	t.Helper()
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(body), hdr...)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /jobs %s: %d %s", body, resp.StatusCode, out)
	}
	var s submitted
	if err := json.Unmarshal(out, &s); err != nil || broker.ValidateID(s.JobID) != nil {
		t.Fatalf("POST /jobs answer %s", out)
	}
	if loc := resp.Header.Get("Location"); loc != "/jobs/"+s.JobID {
		t.Fatalf("Location %q", loc)
	}
	return s.JobID
}

// jobsGet fetches GET /jobs/{id} and requires 200.
func jobsGet(t *testing.T, b *testBundle, id string) jobView {
	t.Helper()
	resp, out := b.request(t, http.MethodGet, "/jobs/"+id, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /jobs/%s: %d %s", id, resp.StatusCode, out)
	}
	var v jobView
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("GET /jobs/%s: %v in %s", id, err, out)
	}
	return v
}

// wantError requires a JSON error answer with the status.
func wantJobError(t *testing.T, what string, resp *http.Response, out []byte, status int) {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if resp.StatusCode != status || json.Unmarshal(out, &e) != nil || e.Error == "" {
		t.Errorf("%s: got %d %s, want %d with a JSON error", what, resp.StatusCode, out, status)
	}
}

// queuedBody takes the job's queue message (no worker runs here) and returns its body.
func queuedBody(t *testing.T, st *broker.Store, model string) []byte {
	t.Helper()
	ctx := testCtx(t, 10*time.Second)
	token, _ := broker.ModelToken(model)
	// The model's jobs wait on one queue per class, program and load options.
	depth, err := st.DepthByKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for key := range depth {
		if k, err := broker.ParseQueueKey(key); err != nil || k.Model != token {
			continue
		}
		// A waiting fetch: a no-wait one may come up empty for a moment on a consumer made
		// before the publish (the server tells consumers after it acknowledges).
		if d, err := st.NextWait(ctx, key, 5*time.Second); err == nil && d != nil {
			return d.Body
		}
	}
	t.Fatalf("no queue message for %s", model)
	return nil
}

func TestSubmitJobStripsForemanFieldsOnly(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	body := `{"model":"tiny-a", "kind":"generate",  "prompt":"hi \u00e9",` +
		`"options": {"temperature" : 0, "seed":7}, "state_webhook_url":"https://example.com/hook?x=1",` +
		`"webhook_events":["done","failed"], "stream":false}`
	id := jobsSubmit(t, b, body)
	got := queuedBody(t, b.Broker.Store, "tiny-a")
	want := `{"model":"tiny-a","prompt":"hi \u00e9","options":{"temperature" : 0, "seed":7},"stream":false}`
	if string(got) != want {
		t.Fatalf("stored body\n%s\nwant\n%s", got, want)
	}
	j, _, err := b.Broker.Store.Get(testCtx(t, 5*time.Second), id)
	if err != nil {
		t.Fatal(err)
	}
	if j.Kind != broker.KindGenerate || j.Sync || j.Webhook == nil || j.Webhook.URL != "https://example.com/hook?x=1" ||
		len(j.Webhook.Events) != 2 || j.Webhook.Events[0] != broker.StateDone {
		t.Fatalf("record %+v webhook %+v", j, j.Webhook)
	}

	// The Responses and Anthropic Messages APIs are kinds too, as are the other two
	// embedding routes.
	for _, k := range []struct{ kind, body string }{
		{"openai_responses", `{"model":"tiny-a","kind":"openai_responses","input":"hi"}`},
		{"anthropic_messages", `{"model":"tiny-a","kind":"anthropic_messages","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`},
		{"embeddings", `{"model":"tiny-embed","kind":"embeddings","prompt":"hi"}`},
		{"openai_embeddings", `{"model":"tiny-embed","kind":"openai_embeddings","input":["hi"]}`},
	} {
		if v := jobsGet(t, b, jobsSubmit(t, b, k.body)); string(v.Kind) != k.kind {
			t.Errorf("kind %s: record has %q", k.kind, v.Kind)
		}
	}

	// Without foreman fields the body is passed on untouched, and kind defaults to chat.
	plain := "{ \"model\" : \"tiny-b\",\n \"messages\": [ {\"role\":\"user\",\"content\":\"x\"} ] }"
	id = jobsSubmit(t, b, plain)
	if got := queuedBody(t, b.Broker.Store, "tiny-b"); string(got) != plain {
		t.Fatalf("untouched body changed:\n%s", got)
	}
	if v := jobsGet(t, b, id); v.Kind != broker.KindChat || v.State != broker.StateQueued || v.Model != "tiny-b" || v.Webhook != nil {
		t.Fatalf("view %+v", v)
	}
}

func TestSubmitJobRejectsBadInput(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	cases := []struct {
		name, body string
		status     int
	}{
		{"empty", ``, 400},
		{"not json", `{"model":`, 400},
		{"array", `[{"model":"tiny-a"}]`, 400},
		{"trailing data", `{"model":"tiny-a"} {}`, 400},
		{"no model", `{"messages":[]}`, 400},
		{"model not a string", `{"model":7}`, 400},
		{"unknown kind", `{"model":"tiny-a","kind":"dance"}`, 400},
		{"kind not a string", `{"model":"tiny-a","kind":1}`, 400},
		{"messages not an array", `{"model":"tiny-a","messages":"hi"}`, 400},
		{"prompt not a string", `{"model":"tiny-a","kind":"generate","prompt":[1]}`, 400},
		{"input not text", `{"model":"tiny-embed","kind":"embed","input":5}`, 400},
		{"openai input not text", `{"model":"tiny-embed","kind":"openai_embeddings","input":{}}`, 400},
		{"embeddings prompt not a string", `{"model":"tiny-embed","kind":"embeddings","prompt":["x"]}`, 400},
		{"responses input not text", `{"model":"tiny-a","kind":"openai_responses","input":5}`, 400},
		{"anthropic messages not an array", `{"model":"tiny-a","kind":"anthropic_messages","max_tokens":4,"messages":"hi"}`, 400},
		{"relative webhook", `{"model":"tiny-a","state_webhook_url":"/hook"}`, 400},
		{"ftp webhook", `{"model":"tiny-a","state_webhook_url":"ftp://example.com/x"}`, 400},
		{"hostless webhook", `{"model":"tiny-a","state_webhook_url":"http://"}`, 400},
		{"webhook not a string", `{"model":"tiny-a","state_webhook_url":{"u":1}}`, 400},
		{"unknown event", `{"model":"tiny-a","state_webhook_url":"http://x.test/h","webhook_events":["done","exploded"]}`, 400},
		{"events not strings", `{"model":"tiny-a","state_webhook_url":"http://x.test/h","webhook_events":"done"}`, 400},
		{"events without url", `{"model":"tiny-a","webhook_events":["done"]}`, 400},
		// The record, shown to every caller, holds the URL.
		{"webhook with credentials", `{"model":"tiny-a","state_webhook_url":"https://user:pa55word@x.test/h"}`, 400},
		{"webhook with a user", `{"model":"tiny-a","state_webhook_url":"https://user@x.test/h"}`, 400},
		{"model padded to a megabyte", `{"model":"tiny-a` + strings.Repeat(" ", 1<<20) + `"}`, 400},
		// Ollama answers such names "model is required"; shown in a terminal they rewrite it.
		{"model padded", `{"model":" tiny-a","messages":[]}`, 400},
		{"model with a carriage return", `{"model":"tiny-a\r","messages":[]}`, 400},
		{"model with an escape sequence", `{"model":"tiny-a\u001b[2J","messages":[]}`, 400},
		{"model with a C1 control", `{"model":"tiny-a\u0085","messages":[]}`, 400},
		// Names Ollama cannot parse could only fail on the target.
		{"model with an empty tag", `{"model":"tiny-a:","messages":[]}`, 400},
		{"model with two tags", `{"model":"tiny-a:latest:latest","kind":"generate","prompt":"x"}`, 400},
		{"model with five parts", `{"model":"a/b/c/d/e","messages":[]}`, 400},
		// A name Ollama takes (an 80-byte model and tag) that no queue subject can carry.
		{"model longer than foreman queues", `{"model":"` + strings.Repeat("m", 80) + ":" + strings.Repeat("t", 80) + `","messages":[]}`, 400},
		{"webhook URL over 2048 bytes", `{"model":"tiny-a","state_webhook_url":"` + longHook(2049) + `"}`, 400},
		{"unknown model", `{"model":"no-such-model","messages":[]}`, 404},
		// Ollama decodes case-insensitively, the last key winning: it would run the ghost.
		{"unknown model in another case", `{"model":"tiny-a","Model":"no-such-model","messages":[]}`, 404},
	}
	for _, c := range cases {
		resp, out := b.request(t, http.MethodPost, "/jobs", []byte(c.body))
		wantJobError(t, c.name, resp, out, c.status)
		if strings.Contains(string(out), "pa55word") {
			t.Errorf("%s: the answer quotes the password: %s", c.name, out)
		}
	}
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a"}`), "Idempotency-Key", strings.Repeat("k", maxIdempotencyKey+1))
	wantJobError(t, "long idempotency key", resp, out, 400)
	if n, _ := b.Broker.Store.QueueLen(testCtx(t, 5*time.Second)); n != 0 {
		t.Fatalf("rejected submits queued %d jobs", n)
	}
	// At their bounds, a key and a URL are taken.
	jobsSubmit(t, b, `{"model":"tiny-a"}`, "Idempotency-Key", strings.Repeat("k", maxIdempotencyKey))
	jobsSubmit(t, b, `{"model":"tiny-a","state_webhook_url":"`+longHook(2048)+`"}`)
}

// longHook is a webhook URL of n bytes.
func longHook(n int) string {
	const head = "http://hooks.test/"
	return head + strings.Repeat("p", n-len(head))
}

func TestSubmitJobIdempotencyKey(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	body := `{"model":"tiny-a","messages":[]}`
	first := jobsSubmit(t, b, body, "Idempotency-Key", "order-1")
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(body), "Idempotency-Key", "order-1")
	var again submitted
	_ = json.Unmarshal(out, &again)
	if resp.StatusCode != http.StatusAccepted || again.JobID != first || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("repeat: %d %s (first %s)", resp.StatusCode, out, first)
	}
	resp, out = b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-b"}`), "Idempotency-Key", "order-1")
	wantJobError(t, "same key, other body", resp, out, http.StatusUnprocessableEntity)
	// A retry may name another webhook receiver (a client's ephemeral one): same job.
	hooked := `{"model":"tiny-a","messages":[],"state_webhook_url":"http://127.0.0.1:9/a","webhook_events":["done"]}`
	withHook := jobsSubmit(t, b, hooked, "Idempotency-Key", "order-2")
	resp, out = b.request(t, http.MethodPost, "/jobs", []byte(strings.Replace(hooked, "9/a", "10/b", 1)), "Idempotency-Key", "order-2")
	_ = json.Unmarshal(out, &again)
	if resp.StatusCode != http.StatusAccepted || again.JobID != withHook {
		t.Fatalf("retry with another webhook URL: %d %s, want the job %s", resp.StatusCode, out, withHook)
	}

	// Racing identical requests make one job.
	var wg sync.WaitGroup
	ids := make([]string, 8)
	for i := range ids {
		wg.Go(func() {
			resp, out := b.request(t, http.MethodPost, "/jobs", []byte(body), "Idempotency-Key", "race")
			var s submitted
			_ = json.Unmarshal(out, &s)
			if resp.StatusCode != http.StatusAccepted {
				t.Errorf("racing submit: %d %s", resp.StatusCode, out)
			}
			ids[i] = s.JobID
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("racing submits made different jobs: %v", ids)
		}
	}
	jobsGet(t, b, ids[0])
	if n, _ := b.Broker.Store.QueueLen(testCtx(t, 5*time.Second)); n != 3 {
		t.Fatalf("queue holds %d jobs, want 3 (order-1, order-2 and race)", n)
	}
}

func TestSubmitJobQueueFull(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withBroker(brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 1 })))
	jobsSubmit(t, b, `{"model":"tiny-a"}`, "Idempotency-Key", "a")
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a"}`), "Idempotency-Key", "b")
	wantJobError(t, "queue full", resp, out, http.StatusServiceUnavailable)
	if resp.Header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	if n := metricValue(scrape(t, b), "foreman_requests_refused_total", "reason", "queue_full"); n != 1 {
		t.Errorf("refusals counted: %v, want 1", n)
	}
	// The failed submit released its key: after room frees up, the same key works.
	if _, err := b.Broker.Store.Cancel(testCtx(t, 5*time.Second), jobsList(t, b, "")[0].ID, ""); err != nil {
		t.Fatal(err)
	}
	jobsSubmit(t, b, `{"model":"tiny-a"}`, "Idempotency-Key", "b")
}

// finishJob moves a job to done with a result and artifacts, as the worker would.
func finishJob(t *testing.T, st *broker.Store, id string, result []byte, arts map[string][2]string) {
	t.Helper()
	ctx := testCtx(t, 10*time.Second)
	var metas []broker.Artifact
	for name, ct := range arts {
		a, err := st.StoreArtifact(ctx, id, name, ct[0], []byte(ct[1]))
		if err != nil {
			t.Fatal(err)
		}
		metas = append(metas, a)
	}
	for _, s := range []broker.State{broker.StateWorking, broker.StateDone} {
		_, _, err := st.Modify(ctx, id, func(j *broker.Job) error {
			j.State = s
			if s == broker.StateDone {
				j.Result = result
				for _, a := range metas {
					j.SetArtifact(a)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestGetJobWithArtifacts(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[]}`)
	big := strings.Repeat("0123456789abcdef", 20<<10) // 320 KiB
	binary := string([]byte{0xff, 0x00, 0xfe})
	finishJob(t, b.Broker.Store, id, []byte(`{"done":true}`), map[string][2]string{
		"result.json": {"application/json", `{"done":true}`},
		"notes.txt":   {"text/plain; charset=utf-8", "héllo"},
		"blob.bin":    {"application/octet-stream", binary},
		"big.txt":     {"text/plain", big},
		// At the bound an artifact is embedded, a byte past it linked.
		"edge.txt": {"text/plain", strings.Repeat("e", inlineArtifactLimit)},
		"past.txt": {"text/plain", strings.Repeat("p", inlineArtifactLimit+1)},
	})
	v := jobsGet(t, b, id)
	if v.State != broker.StateDone || string(v.Result) != `{"done":true}` || v.StartedAt == nil || v.FinishedAt == nil || v.Error != "" {
		t.Fatalf("view %+v", v)
	}
	arts := map[string]artifactView{}
	for _, a := range v.Artifacts {
		arts[a.Name] = a
	}
	if a := arts["notes.txt"]; a.Data == nil || *a.Data != "héllo" || a.Encoding != "" || a.URL != "" {
		t.Errorf("text artifact %+v", a)
	}
	if a := arts["result.json"]; a.Data == nil || *a.Data != `{"done":true}` {
		t.Errorf("json artifact %+v", a)
	}
	if a := arts["blob.bin"]; a.Data == nil || a.Encoding != "base64" || *a.Data != base64.StdEncoding.EncodeToString([]byte(binary)) {
		t.Errorf("binary artifact %+v", a)
	}
	if a := arts["edge.txt"]; a.Data == nil || len(*a.Data) != inlineArtifactLimit || a.URL != "" {
		t.Errorf("artifact of %d bytes: embedded %v, URL %q; want it embedded", inlineArtifactLimit, a.Data != nil, a.URL)
	}
	if a := arts["past.txt"]; a.Data != nil || a.URL != "/jobs/"+id+"/artifacts/past.txt" {
		t.Errorf("artifact of %d bytes: URL %q; want it linked", inlineArtifactLimit+1, a.URL)
	}
	a := arts["big.txt"]
	if a.Data != nil || a.URL != "/jobs/"+id+"/artifacts/big.txt" || a.Size != int64(len(big)) {
		t.Fatalf("large artifact %+v", a)
	}
	resp, out := b.request(t, http.MethodGet, a.URL, nil)
	if resp.StatusCode != 200 || string(out) != big || resp.Header.Get("Content-Type") != "text/plain" {
		t.Fatalf("GET %s: %d %s, %d bytes", a.URL, resp.StatusCode, resp.Header.Get("Content-Type"), len(out))
	}
	resp, out = b.request(t, http.MethodGet, "/jobs/"+id+"/artifacts/blob.bin", nil)
	if resp.StatusCode != 200 || !bytes.Equal(out, []byte(binary)) || resp.Header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("binary artifact: %d %q", resp.StatusCode, out)
	}

	// A result too large for the record is read back from result.json.
	id2 := jobsSubmit(t, b, `{"model":"tiny-a","messages":[]}`)
	finishJob(t, b.Broker.Store, id2, nil, map[string][2]string{"result.json": {"application/json", `{"message":{"content":"long"}}`}})
	if v := jobsGet(t, b, id2); string(v.Result) != `{"message":{"content":"long"}}` {
		t.Fatalf("result from artifact: %s", v.Result)
	}
}

func TestJobsBadPaths(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	id := jobsSubmit(t, b, `{"model":"tiny-a"}`)
	unknown := broker.NewID()
	cases := []struct {
		method, path string
		status       int
	}{
		{"GET", "/jobs/not-a-ulid", 400},
		{"GET", "/jobs/" + strings.ToLower(id), 400},
		{"GET", "/jobs/" + unknown, 404},
		{"DELETE", "/jobs/nope", 400},
		{"DELETE", "/jobs/" + unknown, 404},
		{"GET", "/jobs/" + id + "/artifacts/.hidden", 400},
		{"GET", "/jobs/" + id + "/artifacts/..%2F..%2Fetc", 400},
		{"GET", "/jobs/" + id + "/artifacts/a%2Fb", 400},
		{"GET", "/jobs/" + id + "/artifacts/" + strings.Repeat("x", 200), 400},
		{"GET", "/jobs/" + id + "/artifacts/missing.txt", 404},
		{"GET", "/jobs/bad/artifacts/result.json", 400},
		{"GET", "/jobs/" + unknown + "/artifacts/result.json", 404},
		{"GET", "/jobs/bad/deliveries", 400},
		{"GET", "/jobs/" + unknown + "/deliveries", 404},
		{"POST", "/jobs/" + unknown + "/deliveries/redeliver", 404},
		{"POST", "/jobs/" + id + "/deliveries/redeliver", 409}, // no webhook
		{"GET", "/jobs?state=exploded", 400},
		{"GET", "/jobs?limit=0", 400},
		{"GET", "/jobs?limit=abc", 400},
		{"GET", "/jobs?limit=1001", 400},
		{"GET", "/jobs?cursor=zzz", 400},
	}
	for _, c := range cases {
		resp, out := b.request(t, c.method, c.path, nil)
		wantJobError(t, c.method+" "+c.path, resp, out, c.status)
	}
}

// A refused id, artifact name or cursor is quoted back cut short: a request line may
// carry a megabyte, and its 400 should not carry it back.
func TestJobsBadPathsQuoteLongInputShort(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	id := jobsSubmit(t, b, `{"model":"tiny-a"}`)
	long := strings.Repeat("Z", 64<<10)
	for _, c := range []struct{ method, path string }{
		{"GET", "/jobs/" + long},
		{"DELETE", "/jobs/" + long},
		{"GET", "/jobs/" + long + "/artifacts/result.json"},
		{"GET", "/jobs/" + long + "/deliveries"},
		{"POST", "/jobs/" + long + "/deliveries/redeliver"},
		{"GET", "/jobs/" + id + "/artifacts/" + long},
		{"GET", "/jobs?cursor=" + long},
	} {
		resp, out := b.request(t, c.method, c.path, nil)
		what := c.method + " " + c.path[:min(len(c.path), 40)] + "…"
		wantJobError(t, what, resp, out, http.StatusBadRequest)
		if len(out) > 512 || !strings.Contains(string(out), "ZZZZ") {
			t.Errorf("%s: %d-byte error, want the input quoted cut short: %.300s", what, len(out), out)
		}
	}
}

func jobsList(t *testing.T, b *testBundle, query string) []jobView {
	t.Helper()
	views, _ := jobsListPage(t, b, query)
	return views
}

func jobsListPage(t *testing.T, b *testBundle, query string) ([]jobView, string) {
	t.Helper()
	resp, out := b.request(t, http.MethodGet, "/jobs"+query, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("GET /jobs%s: %d %s", query, resp.StatusCode, out)
	}
	var page struct {
		Jobs []jobView `json:"jobs"`
		Next *string   `json:"next_cursor"`
	}
	if err := json.Unmarshal(out, &page); err != nil || page.Jobs == nil || page.Next == nil {
		t.Fatalf("GET /jobs%s: %s", query, out)
	}
	return page.Jobs, *page.Next
}

func TestListJobs(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	a1 := jobsSubmit(t, b, `{"model":"tiny-a"}`)
	b1 := jobsSubmit(t, b, `{"model":"tiny-b"}`)
	a2 := jobsSubmit(t, b, `{"model":"tiny-a"}`)
	finishJob(t, b.Broker.Store, a1, []byte(`{}`), nil)

	page, next := jobsListPage(t, b, "?limit=2")
	if len(page) != 2 || page[0].ID != a2 || page[1].ID != b1 || next != b1 {
		t.Fatalf("page 1: %v next %q", ids(page), next)
	}
	page, next = jobsListPage(t, b, "?limit=2&cursor="+next)
	if len(page) != 1 || page[0].ID != a1 || next != "" {
		t.Fatalf("page 2: %v next %q", ids(page), next)
	}
	if got := ids(jobsList(t, b, "?model=TINY-A")); len(got) != 2 || got[0] != a2 || got[1] != a1 {
		t.Fatalf("model filter: %v", got)
	}
	if got := ids(jobsList(t, b, "?state=done")); len(got) != 1 || got[0] != a1 {
		t.Fatalf("state filter: %v", got)
	}
	if got := jobsList(t, b, "?state=failed"); len(got) != 0 {
		t.Fatalf("state=failed: %v", ids(got))
	}
	// Several states: any of them (the finished jobs, however many wait newer).
	if resp, out := b.request(t, http.MethodDelete, "/jobs/"+b1, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("cancel %s: %d %s", b1, resp.StatusCode, out)
	}
	if got := ids(jobsList(t, b, "?state=done,failed,canceled")); len(got) != 2 || got[0] != b1 || got[1] != a1 {
		t.Fatalf("finished states: %v, want [%s %s]", got, b1, a1)
	}
	resp, out := b.request(t, http.MethodGet, "/jobs?state=done,finished", nil)
	wantError(t, resp, out, http.StatusBadRequest, `unknown state "finished"`)
}

// TestListJobsPageBoundedByResultBytes: a GET /jobs page holds at most listResults bytes
// of its jobs' results (a record holds up to 64 KiB of one, so a page of 1000 could hold
// 64 MB), whatever its limit, and always one job, however large its result; a page cut
// short has a next_cursor, and the pages together list every job once, newest first.
func TestListJobsPageBoundedByResultBytes(t *testing.T) {
	t.Parallel()
	const bound = 1000
	b := newTestBundle(t, withGateway(func(c *Config) { c.listResults = bound }))
	result := func(n int) []byte { return []byte(`{"text":"` + strings.Repeat("r", n-len(`{"text":""}`)) + `"}`) }
	var want []string // newest first
	for _, size := range []int{400, 1500, 400, 400, 300, 300} {
		id := jobsSubmit(t, b, `{"model":"tiny-a"}`)
		finishJob(t, b.Broker.Store, id, result(size), nil)
		want = append([]string{id}, want...)
	}
	queued := jobsSubmit(t, b, `{"model":"tiny-b"}`) // no result
	want = append([]string{queued}, want...)

	var got []string
	pages, cursor := 0, ""
	for {
		query := "?limit=1000"
		if cursor != "" {
			query += "&cursor=" + cursor
		}
		page, next := jobsListPage(t, b, query)
		pages++
		size := 0
		for _, v := range page {
			if string(v.Result) != "null" {
				size += len(v.Result)
			}
		}
		if len(page) == 0 || (len(page) > 1 && size > bound) {
			t.Fatalf("page %d: %d jobs with %d bytes of results, want at least one and at most %d bytes unless one job", pages, len(page), size, bound)
		}
		got = append(got, ids(page)...)
		if next == "" {
			break
		}
		if next != page[len(page)-1].ID || pages > len(want) {
			t.Fatalf("page %d: next_cursor %q after %v", pages, next, ids(page))
		}
		cursor = next
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("paged through %v, want %v", got, want)
	}
	// queued+300+300 | 400+400 | 1500 alone | 400
	if pages != 4 {
		t.Fatalf("%d pages, want 4", pages)
	}

	// The default bound (8 MiB) takes them all at once.
	d := newTestBundle(t)
	id := jobsSubmit(t, d, `{"model":"tiny-a"}`)
	finishJob(t, d.Broker.Store, id, result(60<<10), nil)
	id2 := jobsSubmit(t, d, `{"model":"tiny-a"}`)
	finishJob(t, d.Broker.Store, id2, result(60<<10), nil)
	if page, next := jobsListPage(t, d, "?limit=1000"); len(page) != 2 || next != "" {
		t.Fatalf("default bound: %v next %q", ids(page), next)
	}
}

func ids(vs []jobView) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.ID
	}
	return out
}

func TestCancelJobStates(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 10*time.Second)
	queued := jobsSubmit(t, b, `{"model":"tiny-a"}`)
	resp, out := b.request(t, http.MethodDelete, "/jobs/"+queued, nil)
	var v jobView
	if resp.StatusCode != 200 || json.Unmarshal(out, &v) != nil || v.State != broker.StateCanceled {
		t.Fatalf("cancel queued: %d %s", resp.StatusCode, out)
	}
	if n, _ := b.Broker.Store.QueueLen(ctx); n != 0 {
		t.Fatalf("a canceled queued job stays in the queue (%d)", n)
	}
	resp, out = b.request(t, http.MethodDelete, "/jobs/"+queued, nil)
	wantJobError(t, "cancel canceled", resp, out, http.StatusConflict)

	// A running job: the answer waits for its worker (simulated) to end it.
	running := jobsSubmit(t, b, `{"model":"tiny-a"}`)
	startJob(t, b.Broker.Store, running)
	fakeWorkerEnds(t, b, running, broker.StateCanceled)
	resp, out = b.request(t, http.MethodDelete, "/jobs/"+running, nil)
	v = jobView{}
	if resp.StatusCode != 200 || json.Unmarshal(out, &v) != nil || v.State != broker.StateCanceled || v.Error != "canceled by DELETE /jobs" {
		t.Fatalf("cancel running: %d %s", resp.StatusCode, out)
	}
	if jobsGet(t, b, running).State != broker.StateCanceled {
		t.Fatal("cancel running: the record is not canceled")
	}

	// A running job that finishes before its worker sees the request: the cancel lost.
	finishing := jobsSubmit(t, b, `{"model":"tiny-a"}`)
	startJob(t, b.Broker.Store, finishing)
	fakeWorkerEnds(t, b, finishing, broker.StateDone)
	resp, out = b.request(t, http.MethodDelete, "/jobs/"+finishing, nil)
	wantJobError(t, "cancel a job that finished first", resp, out, http.StatusConflict)
	if jobsGet(t, b, finishing).State != broker.StateDone {
		t.Fatal("the job that finished first is not done")
	}

	done := jobsSubmit(t, b, `{"model":"tiny-a"}`)
	finishJob(t, b.Broker.Store, done, []byte(`{}`), nil)
	resp, out = b.request(t, http.MethodDelete, "/jobs/"+done, nil)
	wantJobError(t, "cancel done", resp, out, http.StatusConflict)
	if jobsGet(t, b, done).State != broker.StateDone {
		t.Fatal("a refused cancel changed the job")
	}
}

// A running job whose worker does not end it in time: 202 with the pending request.
func TestCancelJobRunningNoWorker(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	id := jobsSubmit(t, b, `{"model":"tiny-a"}`)
	startJob(t, b.Broker.Store, id)
	resp, out := b.request(t, http.MethodDelete, "/jobs/"+id, nil)
	var v struct {
		jobView
		CancelRequested string `json:"cancel_requested"`
	}
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(out, &v) != nil ||
		v.ID != id || v.State != broker.StateWorking || v.CancelRequested != "canceled by DELETE /jobs" {
		t.Fatalf("cancel of a running job nobody ends: %d %s, want 202 with the request", resp.StatusCode, out)
	}
	// Asking again changes nothing and answers the same.
	resp, out = b.request(t, http.MethodDelete, "/jobs/"+id, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("second cancel: %d %s", resp.StatusCode, out)
	}
}

// startJob moves a queued job to working, as the worker's start write would.
func startJob(t *testing.T, st *broker.Store, id string) {
	t.Helper()
	if _, _, err := st.Modify(testCtx(t, 10*time.Second), id, func(j *broker.Job) error {
		j.State, j.Attempt = broker.StateWorking, 1
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// fakeWorkerEnds plays the worker of running job id: when its record carries a cancel
// request, it writes the terminal state end (with the request as the error if canceled).
func fakeWorkerEnds(t *testing.T, b *testBundle, id string, end broker.State) {
	t.Helper()
	st := b.Broker.Store
	ch := make(chan *nats.Msg, 16)
	sub, err := b.Broker.Conn.ChanSubscribe(broker.StateSubject(id), ch)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Broker.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 20*time.Second)
	done := make(chan struct{})
	t.Cleanup(func() { <-done })
	go func() {
		defer close(done)
		defer func() { _ = sub.Unsubscribe() }()
		for {
			select {
			case m := <-ch:
				ev, err := broker.DecodeJob(m.Data)
				if err != nil || ev.CancelRequested == "" || ev.State.Terminal() {
					continue
				}
				_, _, err = st.Modify(ctx, id, func(j *broker.Job) error {
					j.State = end
					if end == broker.StateCanceled {
						j.Error = j.CancelRequested
					}
					return nil
				})
				if err != nil {
					t.Errorf("fake worker: %v", err)
				}
				return
			case <-ctx.Done():
				t.Errorf("fake worker: no cancel request for %s", id)
				return
			}
		}
	}()
}

func TestDeliveriesWithoutDispatcher(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	id := jobsSubmit(t, b, `{"model":"tiny-a","state_webhook_url":"http://127.0.0.1:1/hook"}`)
	resp, out := b.request(t, http.MethodGet, "/jobs/"+id+"/deliveries", nil)
	if resp.StatusCode != 200 || strings.TrimSpace(string(out)) != `{"deliveries":[]}` {
		t.Fatalf("deliveries: %d %s", resp.StatusCode, out)
	}
	resp, out = b.request(t, http.MethodPost, "/jobs/"+id+"/deliveries/redeliver", nil)
	wantJobError(t, "redeliver without dispatcher", resp, out, http.StatusServiceUnavailable)
}

func TestNATSSubmit(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 20*time.Second)
	done := make(chan error, 1)
	runCtx, stop := contextWithCancel(ctx)
	go func() { done <- b.GW.RunNATSSubmit(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("RunNATSSubmit: %v", err)
		}
	})
	nc := b.Broker.Conn
	var reply submitReply
	request := func(data string, hdr ...string) {
		t.Helper()
		msg := natsMsg(broker.SubmitSubject, data, hdr...)
		for {
			m, err := nc.RequestMsgWithContext(ctx, msg)
			if err != nil && strings.Contains(err.Error(), "no responders") {
				continue // the responder is still subscribing
			}
			if err != nil {
				t.Fatal(err)
			}
			reply = submitReply{}
			if err := json.Unmarshal(m.Data, &reply); err != nil {
				t.Fatalf("reply %s", m.Data)
			}
			return
		}
	}
	request(`{"model":"tiny-a","kind":"generate","prompt":"x","state_webhook_url":"http://example.com/h"}`)
	if broker.ValidateID(reply.JobID) != nil || reply.Error != "" {
		t.Fatalf("submit reply %+v", reply)
	}
	j, _, err := b.Broker.Store.Get(ctx, reply.JobID)
	if err != nil || j.Kind != broker.KindGenerate || j.Sync || j.Webhook == nil {
		t.Fatalf("job %+v %v", j, err)
	}
	if got := queuedBody(t, b.Broker.Store, "tiny-a"); string(got) != `{"model":"tiny-a","prompt":"x"}` {
		t.Fatalf("queued body %s", got)
	}
	request(`{"model":"nope"}`)
	if reply.JobID != "" || reply.Status != 404 || reply.Error == "" {
		t.Fatalf("unknown model reply %+v", reply)
	}
	request(`not json`)
	if reply.Status != 400 || reply.Error == "" {
		t.Fatalf("bad body reply %+v", reply)
	}
	request(`{"model":"tiny-b"}`, "Idempotency-Key", "k1")
	first := reply.JobID
	request(`{"model":"tiny-b"}`, "Idempotency-Key", "k1")
	if first == "" || reply.JobID != first {
		t.Fatalf("idempotent NATS submit: %s then %s", first, reply.JobID)
	}
}

func contextWithCancel(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithCancel(ctx)
}

// natsMsg builds a message with header name/value pairs.
func natsMsg(subject, data string, hdr ...string) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = []byte(data)
	for i := 0; i+1 < len(hdr); i += 2 {
		m.Header.Set(hdr[i], hdr[i+1])
	}
	return m
}

// A key whose first request died between claiming it and writing its job (a crash) must
// not keep answering with a job that does not exist: once that request's deadline has
// passed, the next request takes it over.
func TestIdempotencyKeyOfAJobThatNeverCameToBe(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	body := `{"model":"tiny-a","messages":[]}`
	sum := sha256.Sum256([]byte("chat\n" + body))
	ghost := broker.NewID()
	if _, created, err := b.Broker.Store.ClaimIdempotencyKey(ctx, scopedIdempotencyKey("", "crashed"), broker.IdempotencyClaim{JobID: ghost, BodySHA256: hex.EncodeToString(sum[:]), Until: time.Now().Add(-claimGrace)}); err != nil || !created {
		t.Fatalf("claim: %v %v", created, err)
	}
	id := jobsSubmit(t, b, body, "Idempotency-Key", "crashed")
	if id == ghost {
		t.Fatalf("answered with the job that never existed")
	}
	jobsGet(t, b, id)
	if again := jobsSubmit(t, b, body, "Idempotency-Key", "crashed"); again != id {
		t.Fatalf("the key now names %s, want %s", again, id)
	}
}

// A webhook_events list repeating a state keeps it once: a client cannot grow the job's
// record (which every later write and webhook delivery must fit in a NATS message) with
// repeats.
func TestSubmitJobWebhookEventsRepeated(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	events := strings.Repeat(`"done",`, 5000) + `"failed"`
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a","messages":[],"state_webhook_url":"http://127.0.0.1:9/a","webhook_events":[`+events+`]}`))
	var sub submitted
	if err := json.Unmarshal(out, &sub); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /jobs with 5,001 events: %d %.200s", resp.StatusCode, out)
	}
	j, _, err := b.Broker.Store.Get(testCtx(t, 5*time.Second), sub.JobID)
	if err != nil {
		t.Fatal(err)
	}
	if want := []broker.State{broker.StateDone, broker.StateFailed}; !slices.Equal(j.Webhook.Events, want) {
		t.Fatalf("webhook events %v, want %v", j.Webhook.Events, want)
	}
}
