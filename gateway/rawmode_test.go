package gateway

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// rawModels are the fake's models for the raw mode tests: tiny-a completes, tiny-embed
// embeds only, tiny-img generates images.
func rawModels() bundleOption {
	return withFake(ollamatest.WithModels(ollamatest.Model{Name: "tiny-a"}, ollamatest.Model{Name: "tiny-embed", Embedding: true},
		ollamatest.Model{Name: "tiny-img", Image: true}))
}

// rawRefusedBodies are native generate bodies Ollama's handler (v0.17.4) refuses with
// raw mode's refusal before it schedules a runner: raw with a template, system or
// context, member names matched as its decoder matches them, before a think string,
// insert, or completion itself (an embedding model).
var rawRefusedBodies = []string{
	`{"model":"tiny-a","prompt":"hi","raw":true,"system":"s"}`,
	`{"model":"tiny-a","prompt":"hi","raw":true,"template":"{{ .Prompt }}","stream":false}`,
	`{"model":"tiny-a","prompt":"hi","raw":true,"context":[1,2]}`,
	`{"model":"tiny-a","prompt":"hi","RAW":true,"System":"s"}`,
	`{"model":"tiny-a","prompt":"hi","raw":false,"system":"s","raw":true}`,
	`{"model":"tiny-a","prompt":"hi","raw":true,"system":"s","think":"high","suffix":"end"}`,
	`{"model":"tiny-a","prompt":"","raw":true,"system":"s"}`, // a load, not an unload: no keep_alive
	`{"model":"tiny-a","prompt":"hi","raw":true,"system":"s","keep_alive":0}`,
	`{"model":"tiny-embed","prompt":"hi","raw":true,"system":"s"}`,
	// No prompt and a keep_alive other than 0: a load that keeps the model so long, not
	// an unload (Ollama's is a keep_alive of 0 alone).
	`{"model":"tiny-a","raw":true,"system":"s","keep_alive":"5m"}`,
	`{"model":"tiny-a","prompt":"","raw":true,"context":[1],"keep_alive":-1}`,
	`{"model":"tiny-embed","raw":true,"system":"s","keep_alive":300}`,
}

// rawQueuedBodies are native generate bodies naming raw mode that Ollama does not refuse
// so, or may not, before it schedules a runner: they are queued as before.
var rawQueuedBodies = []string{
	`{"model":"tiny-a","prompt":"hi","raw":true}`,
	`{"model":"tiny-a","prompt":"hi","raw":true,"system":"","template":"","context":[]}`,
	`{"model":"tiny-a","prompt":"hi","raw":false,"system":"s"}`,
	`{"model":"tiny-a","prompt":"hi","raw":true,"system":"s","raw":false}`,
	`{"model":"tiny-a","prompt":"hi","raw":true,"system":"s","system":""}`,
	// An unload: Ollama unloads before it looks at raw mode (a generate has no
	// messages: a "messages" member completes nothing).
	`{"model":"tiny-a","raw":true,"system":"s","keep_alive":0}`,
	`{"model":"tiny-a","prompt":"","raw":true,"context":[1],"keep_alive":"0s"}`,
	`{"model":"tiny-a","raw":true,"system":"s","keep_alive":0,"messages":[{"role":"user","content":"hi"}]}`,
	// An image model's generate runs apart, before raw mode's check.
	`{"model":"tiny-img","prompt":"a lighthouse","raw":true,"system":"s"}`,
}

// A POST /jobs or foreman.jobs.submit generate job asking for raw mode with a template,
// system or context is refused at submit, 400 in Ollama's words, no job made: queued, it
// was accepted (202) only to fail so in its turn. What Ollama does not refuse so before
// it schedules a runner is queued as before.
func TestRawModeJobsRefusedAtSubmit(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, rawModels())
	runUntilCleanup(t, "nats submit", b.GW.RunNATSSubmit)
	ctx := testCtx(t, 30*time.Second)
	asJob := func(body string) []byte { return []byte(`{"kind":"generate",` + body[1:]) }
	want := `{"error":"raw mode does not support template, system, or context"}`
	for _, body := range rawRefusedBodies {
		got := post(t, ctx, b.URL, "/jobs", asJob(body))
		if got.Status != http.StatusBadRequest || string(bytes.TrimSpace(got.Body)) != want {
			t.Errorf("POST /jobs %s: %d %s, want 400 %s", asJob(body), got.Status, got.Body, want)
		}
		if r := natsSubmit(t, b.testBundle, string(asJob(body))); r.Status != http.StatusBadRequest || r.Error != "raw mode does not support template, system, or context" || r.JobID != "" {
			t.Errorf("foreman.jobs.submit %s: %+v, want 400 raw mode's refusal", asJob(body), r)
		}
	}
	if jobs, _, err := b.Broker.Store.List(context.WithoutCancel(ctx), broker.ListOptions{}); err != nil || len(jobs) != 0 {
		t.Fatalf("jobs made for calls Ollama refuses in its handler: %d (%v)", len(jobs), err)
	}
	for _, body := range append(rawQueuedBodies,
		// Members of a type Ollama's decoder refuses: its words come first, in its turn.
		`{"model":"tiny-a","prompt":"hi","raw":true,"context":[1.5]}`) {
		if got := post(t, ctx, b.URL, "/jobs", asJob(body)); got.Status != http.StatusAccepted {
			t.Errorf("POST /jobs %s: %d %s, want 202", asJob(body), got.Status, got.Body)
		}
	}
}

// A sync /api/generate asking for raw mode with a template, system or context goes
// straight to Ollama, which refuses it before it schedules a runner: its answer as
// Ollama gives it, no job made, and not behind the running job. What Ollama does not
// refuse so is queued as before.
func TestRawModeCallsAreNotQueued(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, rawModels())
	ctx := testCtx(t, 60*time.Second)
	var calls []struct{ path, body string }
	for _, body := range rawRefusedBodies {
		calls = append(calls, struct{ path, body string }{"/api/generate", body})
	}
	answeredAsOllamaWhileAJobRuns(t, ctx, b, calls)
	if jobs, _, err := b.Broker.Store.List(context.WithoutCancel(ctx), broker.ListOptions{}); err != nil || len(jobs) != 1 {
		t.Fatalf("jobs made: %d (%v), want the running chat's alone", len(jobs), err)
	}
	for _, body := range rawQueuedBodies {
		if got := post(t, ctx, b.URL, "/api/generate", []byte(body)); got.Status != http.StatusOK || got.Header.Get(HeaderJobID) == "" {
			t.Errorf("%s: %d %s, job %q; want it queued and answered", body, got.Status, got.Body, got.Header.Get(HeaderJobID))
		}
	}
}

// A remote (cloud) model's raw mode call is sent on to its remote host by Ollama's
// handler before raw mode's check: the remote answers it, so it is queued as before,
// a job and a sync call alike, where the same call for a model of the Mac's own is
// refused at once.
func TestRawModeOfARemoteModelQueued(t *testing.T) {
	t.Parallel()
	remote := withTarget(func(c ollama.Client) ollama.Client { return remoteShow{Client: c, model: "tiny-b"} })
	b := newQueuedBundle(t, nil, remote, withFake(ollamatest.WithModels(ollamatest.Model{Name: "tiny-a"}, ollamatest.Model{Name: "tiny-b"})))
	ctx := testCtx(t, 30*time.Second)
	const want = `{"error":"raw mode does not support template, system, or context"}`
	for range 2 { // the second with the capabilities cached
		for _, model := range []string{"tiny-a", "tiny-b"} {
			body := `{"model":"` + model + `","prompt":"hi","raw":true,"system":"s","stream":false}`
			job := post(t, ctx, b.URL, "/jobs", []byte(`{"kind":"generate",`+body[1:]))
			// The fake is no remote host: it answers the call in its turn with raw mode's
			// refusal, as a job's.
			sync := post(t, ctx, b.URL, "/api/generate", []byte(body))
			switch model {
			case "tiny-a":
				if job.Status != http.StatusBadRequest || string(bytes.TrimSpace(job.Body)) != want {
					t.Errorf("POST /jobs %s: %d %s, want 400 %s", body, job.Status, job.Body, want)
				}
				if id := sync.Header.Get(HeaderJobID); sync.Status != http.StatusBadRequest || id != "" {
					t.Errorf("/api/generate %s: %d %s, job %q; want 400 with no job", body, sync.Status, sync.Body, id)
				}
			default:
				if job.Status != http.StatusAccepted {
					t.Errorf("POST /jobs %s: %d %s, want 202", body, job.Status, job.Body)
				}
				if sync.Header.Get(HeaderJobID) == "" {
					t.Errorf("/api/generate %s: %d %s with no job, want it queued", body, sync.Status, sync.Body)
				}
			}
		}
	}
}

// remoteShow answers /api/show for model as Ollama answers it for a remote (cloud) model.
type remoteShow struct {
	ollama.Client
	model string
}

func (s remoteShow) Do(ctx context.Context, method, path string, header http.Header, body io.Reader) (*http.Response, error) {
	if path != "/api/show" || body == nil {
		return s.Client.Do(ctx, method, path, header, body)
	}
	req, err := io.ReadAll(body)
	if err != nil {
		return nil, err
	}
	if !bytes.Contains(req, []byte(`"`+s.model)) {
		return s.Client.Do(ctx, method, path, header, bytes.NewReader(req))
	}
	answer := `{"capabilities":["completion"],"remote_host":"https://ollama.com:443","remote_model":"` + s.model + `"}`
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(answer))}, nil
}
