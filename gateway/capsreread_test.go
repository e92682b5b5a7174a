package gateway

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// Bodies of the capability re-read tests: a chat job asking for tools, and the words of
// Ollama's refusal of it on a model without them.
const (
	toolsJob    = `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}`
	noToolsWord = "registry.ollama.ai/library/tiny-a:latest does not support tools"
)

// showsAndTags counts the fake's /api/show and /api/tags calls so far.
func showsAndTags(f *ollamatest.Server) (shows, tags int) {
	for _, c := range f.Calls() {
		switch c.Path {
		case "/api/show":
			shows++
		case "/api/tags":
			tags++
		}
	}
	return shows, tags
}

// A model created again under its name with tools (ollama create, a new template) after
// the last poll of the model list takes a tools job submitted at once, on POST /jobs and
// foreman.jobs.submit, as Ollama would: before refusing for a capability the cache says
// the model lacks, the submit reads the model list again and, the digest being another,
// the model's capabilities. Before, the old model's capabilities refused it until the
// next poll (up to FOREMAN_POLL_INTERVAL) with words Ollama no longer gives.
func TestCapabilityJobsOfAModelCreatedSinceThePoll(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, capsModels())
	runNATSSubmit(t, b.testBundle)
	if got := natsSubmit(t, b.testBundle, toolsJob); got.Status != http.StatusBadRequest || got.Error != noToolsWord {
		t.Fatalf("before the model changed: %+v, want 400 %q", got, noToolsWord)
	}
	b.Fake.AddModel(ollamatest.Model{Name: "tiny-a", Tools: true, Digest: "sha256:" + digestHex('7')})

	id := jobsSubmit(t, b.testBundle, toolsJob)
	waitJobState(t, b.testBundle, id, broker.StateDone)
	got := natsSubmit(t, b.testBundle, toolsJob)
	if got.JobID == "" {
		t.Fatalf("foreman.jobs.submit after the model changed: %+v, want a job", got)
	}
	waitJobState(t, b.testBundle, got.JobID, broker.StateDone)
}

// A model that truly lacks tools is refused as before, in the same words, on both
// submit paths; confirming that takes the model list again but, its digest the same,
// no /api/show: the cached capabilities are still the model's.
func TestCapabilityJobsStillRefusedAfterTheReread(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, capsModels())
	runNATSSubmit(t, b)
	ctx := testCtx(t, 30*time.Second)
	if got := post(t, ctx, b.URL, "/jobs", []byte(toolsJob)); got.Status != http.StatusBadRequest || errorBody(t, got.Body) != noToolsWord {
		t.Fatalf("POST /jobs: %d %s, want 400 %q", got.Status, got.Body, noToolsWord)
	}
	shows, _ := showsAndTags(b.Fake)
	for range 3 {
		if got := post(t, ctx, b.URL, "/jobs", []byte(toolsJob)); got.Status != http.StatusBadRequest || errorBody(t, got.Body) != noToolsWord {
			t.Errorf("POST /jobs: %d %s, want 400 %q", got.Status, got.Body, noToolsWord)
		}
		if got := natsSubmit(t, b, toolsJob); got.Status != http.StatusBadRequest || got.Error != noToolsWord {
			t.Errorf("foreman.jobs.submit: %+v, want 400 %q", got, noToolsWord)
		}
	}
	if n, _ := showsAndTags(b.Fake); n != shows {
		t.Errorf("%d /api/show calls confirming an unchanged model's refusals, want none", n-shows)
	}
	if jobs, _, err := b.Broker.Store.List(ctx, broker.ListOptions{}); err != nil || len(jobs) != 0 {
		t.Errorf("jobs made: %d (%v)", len(jobs), err)
	}
}

// The hot path, a job whose capabilities the cache says are there, asks the target
// nothing: no /api/tags, no /api/show, however many are submitted.
func TestCapabilityJobsTheCacheAllowsAskNothing(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withFake(ollamatest.WithModels(ollamatest.Model{Name: "tiny-a", Tools: true, Thinking: true})))
	runNATSSubmit(t, b)
	thinks := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"think":true}`
	jobsSubmit(t, b, toolsJob) // the first waits for the model's one /api/show
	shows, tags := showsAndTags(b.Fake)
	for range 5 {
		jobsSubmit(t, b, toolsJob)
		jobsSubmit(t, b, thinks)
		if got := natsSubmit(t, b, toolsJob); got.JobID == "" {
			t.Errorf("foreman.jobs.submit: %+v, want a job", got)
		}
	}
	if s, g := showsAndTags(b.Fake); s != shows || g != tags {
		t.Errorf("15 submits the cache allows made %d /api/show and %d /api/tags calls, want none", s-shows, g-tags)
	}
}

// The other direction: the cache says the model has tools and it was created again
// without them since the last poll. The job is queued (nothing is asked on the hot
// path) and fails in its turn with Ollama's words, as before.
func TestCapabilityJobsOfAModelThatLostACapabilityFailInTheirTurn(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, withFake(ollamatest.WithModels(ollamatest.Model{Name: "tiny-a", Tools: true})))
	waitJobState(t, b.testBundle, jobsSubmit(t, b.testBundle, toolsJob), broker.StateDone)
	b.Fake.AddModel(ollamatest.Model{Name: "tiny-a", Digest: "sha256:" + digestHex('8')})
	v := waitJobState(t, b.testBundle, jobsSubmit(t, b.testBundle, toolsJob), broker.StateFailed)
	if v.Error == "" || !strings.Contains(v.Error, noToolsWord) {
		t.Errorf("the job failed with %q, want Ollama's %q", v.Error, noToolsWord)
	}
}

// When the target cannot be asked now (it drops the re-read of its model list), the
// cached judgement is not confirmed and refuses nothing: the job is queued as before, to
// wait for Ollama and be answered by it in its turn (ADR-0046), rather than refused on
// an answer that may be the old model's.
func TestCapabilityJobsQueuedWhenTheRereadFails(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, capsModels())
	ctx := testCtx(t, 30*time.Second)
	if got := post(t, ctx, b.URL, "/jobs", []byte(toolsJob)); got.Status != http.StatusBadRequest || errorBody(t, got.Body) != noToolsWord {
		t.Fatalf("POST /jobs: %d %s, want 400 %q", got.Status, got.Body, noToolsWord)
	}
	b.Fake.SetDown(true)
	jobsSubmit(t, b, toolsJob)
}

// digestHex is 64 hex digits of c, a digest's hex part.
func digestHex(c byte) string {
	b := make([]byte, 64)
	for i := range b {
		b[i] = c
	}
	return string(b)
}

// The same holds for a job refused at submit because its model cannot complete: an
// embedding model created again under its name as a chat model since the last poll takes
// a chat job at once, where the cached answer refused it `"tiny-embed" does not support
// chat` until the next poll.
func TestCompletionJobsOfAModelCreatedSinceThePoll(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, capsModels())
	ctx := testCtx(t, 30*time.Second)
	chats := `{"model":"tiny-embed","messages":[{"role":"user","content":"hi"}]}`
	const want = `"tiny-embed" does not support chat`
	if got := post(t, ctx, b.URL, "/jobs", []byte(chats)); got.Status != http.StatusBadRequest || errorBody(t, got.Body) != want {
		t.Fatalf("POST /jobs %s: %d %s, want 400 %q", chats, got.Status, got.Body, want)
	}
	b.Fake.AddModel(ollamatest.Model{Name: "tiny-embed", Digest: "sha256:" + digestHex('9')})
	waitJobState(t, b.testBundle, jobsSubmit(t, b.testBundle, chats), broker.StateDone)
}
