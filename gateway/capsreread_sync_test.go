package gateway

import (
	"net/http"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A sync call that the cached capabilities would send straight to Ollama (a model that
// cannot complete, or lacks what the call asks for) is sent so only once the model list
// says the cache is of the model there now. A model created again since the last poll
// as one that completes, or has the capability, runs the call: sent straight, it ran
// beside the worker's job, two calls on the Mac at once. Each is queued now, waits for
// the running job and is answered as a job. Each case re-creates its model just before
// its call, so that no earlier case's re-read of the list has seen it.
func TestStraightCallsOfAModelCreatedSinceThePollAreQueued(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, withFake(ollamatest.WithModels(
		ollamatest.Model{Name: "tiny-a"}, ollamatest.Model{Name: "tiny-b"},
		ollamatest.Model{Name: "tiny-embed", Embedding: true}, ollamatest.Model{Name: "runner"})))
	ctx := testCtx(t, 60*time.Second)
	cases := []struct {
		path, body string
		now        ollamatest.Model // the model created again under its name
	}{
		{"/api/chat", toolsJob, ollamatest.Model{Name: "tiny-a", Tools: true, Digest: "sha256:" + digestHex('1')}},
		{"/api/generate", `{"model":"tiny-b","prompt":"hi","think":true,"stream":false}`,
			ollamatest.Model{Name: "tiny-b", Thinking: true, Digest: "sha256:" + digestHex('2')}},
		{"/v1/chat/completions", `{"model":"tiny-embed","messages":[{"role":"user","content":"hi"}]}`,
			ollamatest.Model{Name: "tiny-embed", Digest: "sha256:" + digestHex('3')}},
	}
	for _, c := range cases { // the cache learns each model as it was: Ollama refuses each call
		if got := post(t, ctx, b.URL, c.path, []byte(c.body)); got.Status != http.StatusBadRequest || got.Header.Get(HeaderJobID) != "" {
			t.Fatalf("%s %s before the model changed: %d %s (job %q), want Ollama's 400 with no job", c.path, c.body, got.Status, got.Body, got.Header.Get(HeaderJobID))
		}
	}

	release := b.Fake.Hold("runner")
	defer release()
	running := make(chan rawResponse, 1)
	go func() { running <- post(t, ctx, b.URL, "/api/chat", chatBody("runner", "a long one", "false")) }()
	if err := b.Fake.WaitStarted(ctx, "runner", 1); err != nil {
		t.Fatal(err)
	}
	states := watchStates(t, b.Broker.Conn)
	answers := make([]chan rawResponse, len(cases))
	for i, c := range cases {
		b.Fake.AddModel(c.now)
		answers[i] = make(chan rawResponse, 1)
		go func() { answers[i] <- post(t, ctx, b.URL, c.path, []byte(c.body)) }()
		model := c.now.Name
	wait:
		for {
			select {
			case got := <-answers[i]:
				t.Errorf("%s %s answered while a job of runner runs: %d (job %q), the fake ran %d calls at once; want it queued",
					c.path, c.body, got.Status, got.Header.Get(HeaderJobID), b.Fake.MaxInFlight())
				answers[i] <- got
				break wait
			case j := <-states:
				if j.State == broker.StateQueued && j.Model == model {
					break wait
				}
			case <-ctx.Done():
				t.Fatalf("%s %s: neither answered nor queued: %v", c.path, c.body, ctx.Err())
			}
		}
	}
	release()
	if got := <-running; got.Status != http.StatusOK {
		t.Errorf("the running chat: %d %s", got.Status, got.Body)
	}
	for i, c := range cases {
		if got := <-answers[i]; got.Status != http.StatusOK || got.Header.Get(HeaderJobID) == "" {
			t.Errorf("%s %s: %d %s (job %q), want it answered as a job", c.path, c.body, got.Status, got.Body, got.Header.Get(HeaderJobID))
		}
	}
	if m := b.Fake.MaxInFlight(); m != 1 {
		t.Errorf("the fake ran %d calls at once, want 1", m)
	}
}

// A model that truly lacks what the call asks for still has its call sent straight to
// Ollama, refused in Ollama's words with no job, while a job runs; confirming that costs
// a read of the model list and, its digest unchanged, no /api/show. A call the cache
// allows asks nothing (the hot path).
func TestStraightCallsStillStraightAfterTheReread(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, capsModels())
	ctx := testCtx(t, 60*time.Second)
	chat := string(chatBody("tiny-a", "hi", "false"))
	if got := post(t, ctx, b.URL, "/api/chat", []byte(chat)); got.Status != http.StatusOK {
		t.Fatalf("a chat: %d %s", got.Status, got.Body) // the model's one /api/show
	}
	shows, tags := showsAndTags(b.Fake)
	for range 3 {
		if got := post(t, ctx, b.URL, "/api/chat", []byte(chat)); got.Status != http.StatusOK || got.Header.Get(HeaderJobID) == "" {
			t.Fatalf("a chat: %d %s", got.Status, got.Body)
		}
	}
	if s, g := showsAndTags(b.Fake); s != shows || g != tags {
		t.Errorf("3 chats the cache allows made %d /api/show and %d /api/tags calls, want none", s-shows, g-tags)
	}

	refused := []struct{ path, body string }{
		{"/api/chat", toolsJob},
		{"/api/chat", `{"model":"tiny-embed","messages":[{"role":"user","content":"hi"}]}`},
	}
	for _, c := range refused { // each model's one /api/show
		if got := post(t, ctx, b.URL, c.path, []byte(c.body)); got.Status != http.StatusBadRequest {
			t.Fatalf("%s %s: %d %s, want 400", c.path, c.body, got.Status, got.Body)
		}
	}
	release := b.Fake.Hold("thinker")
	defer release()
	running := make(chan rawResponse, 1)
	go func() { running <- post(t, ctx, b.URL, "/api/chat", chatBody("thinker", "a long one", "false")) }()
	if err := b.Fake.WaitStarted(ctx, "thinker", 1); err != nil {
		t.Fatal(err)
	}
	shows, _ = showsAndTags(b.Fake)
	for _, c := range refused {
		got, want := post(t, ctx, b.URL, c.path, []byte(c.body)), post(t, ctx, b.Fake.URL, c.path, []byte(c.body))
		if got.Status != http.StatusBadRequest || got.Header.Get(HeaderJobID) != "" || string(got.Body) != string(want.Body) {
			t.Errorf("%s %s while a job runs: %d %s (job %q), want Ollama's 400 %s with no job", c.path, c.body, got.Status, got.Body, got.Header.Get(HeaderJobID), want.Body)
		}
	}
	if n, _ := showsAndTags(b.Fake); n != shows {
		t.Errorf("%d /api/show calls confirming unchanged models, want none", n-shows)
	}
	release()
	if got := <-running; got.Status != http.StatusOK {
		t.Errorf("the running chat: %d %s", got.Status, got.Body)
	}
}

// A text model created again under its name as an image generation model since the last
// poll makes pictures at once, on the image routes and POST /jobs: the "makes no images"
// refusal is confirmed against the model list first. Before, the old model's
// capabilities refused it until the next poll.
func TestImageCallsOfAModelCreatedSinceThePoll(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, imageModels())
	ctx := testCtx(t, 60*time.Second)
	gen := `{"model":"tiny-a","prompt":"a lighthouse"}`
	if got := post(t, ctx, b.URL, "/v1/images/generations", []byte(gen)); got.Status != http.StatusBadRequest {
		t.Fatalf("an image of a text model: %d %s, want 400", got.Status, got.Body)
	}
	b.Fake.AddModel(ollamatest.Model{Name: "tiny-a", Image: true, Digest: "sha256:" + digestHex('4')})
	if got := post(t, ctx, b.URL, "/v1/images/generations", []byte(gen)); got.Status != http.StatusOK || got.Header.Get(HeaderJobID) == "" {
		t.Errorf("an image after the model became an image model: %d %s, want a picture", got.Status, got.Body)
	}

	// POST /jobs the same way, on another model the cache knows as a text model.
	b.Fake.AddModel(ollamatest.Model{Name: "tiny-b"})
	job := `{"kind":"openai_images","model":"tiny-b","prompt":"a lighthouse"}`
	if got := post(t, ctx, b.URL, "/jobs", []byte(job)); got.Status != http.StatusBadRequest {
		t.Fatalf("POST /jobs %s: %d %s, want 400", job, got.Status, got.Body)
	}
	b.Fake.AddModel(ollamatest.Model{Name: "tiny-b", Image: true, Digest: "sha256:" + digestHex('5')})
	waitJobState(t, b.testBundle, jobsSubmit(t, b.testBundle, job), broker.StateDone)

	// A text model is still refused, in the same words; its digest unchanged, confirming
	// that costs no /api/show.
	b.Fake.AddModel(ollamatest.Model{Name: "tiny-c"})
	other := `{"model":"tiny-c","prompt":"a lighthouse"}`
	first := post(t, ctx, b.URL, "/v1/images/generations", []byte(other))
	if first.Status != http.StatusBadRequest {
		t.Fatalf("an image of a text model: %d %s, want 400", first.Status, first.Body)
	}
	shows, _ := showsAndTags(b.Fake)
	for range 2 {
		if got := post(t, ctx, b.URL, "/v1/images/generations", []byte(other)); got.Status != http.StatusBadRequest || string(got.Body) != string(first.Body) {
			t.Errorf("an image of a text model again: %d %s, want 400 %s", got.Status, got.Body, first.Body)
		}
		if got := post(t, ctx, b.URL, "/jobs", []byte(`{"kind":"openai_images","model":"tiny-c","prompt":"a lighthouse"}`)); got.Status != http.StatusBadRequest {
			t.Errorf("POST /jobs of a text model's image: %d %s, want 400", got.Status, got.Body)
		}
	}
	if n, _ := showsAndTags(b.Fake); n != shows {
		t.Errorf("%d /api/show calls confirming an unchanged model's refusals, want none", n-shows)
	}
}

// When the target cannot confirm the cached judgement now (its model list's re-read
// fails), the call is not sent straight on it, nor refused on it: it is queued, and
// Ollama answers it in its turn, in its words, as a job.
func TestStraightCallsQueuedWhenTheRereadFails(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, withFake(ollamatest.WithModels(ollamatest.Model{Name: "tiny-a"}, ollamatest.Model{Name: "pic", Image: true})))
	ctx := testCtx(t, 60*time.Second)
	for _, c := range []struct {
		path, body string
		status     int // Ollama's answer in the job's turn
	}{
		{"/api/chat", toolsJob, http.StatusBadRequest},
		{"/v1/images/generations", `{"model":"tiny-a","prompt":"a lighthouse"}`, http.StatusBadGateway}, // an empty answer (ADR-0067)
	} {
		if got := post(t, ctx, b.URL, c.path, []byte(c.body)); got.Status != http.StatusBadRequest || got.Header.Get(HeaderJobID) != "" {
			t.Fatalf("%s %s: %d %s (job %q), want 400 with no job", c.path, c.body, got.Status, got.Body, got.Header.Get(HeaderJobID))
		}
		b.Fake.FailNextOn("/api/tags", 1, ollamatest.Fail500)
		if got := post(t, ctx, b.URL, c.path, []byte(c.body)); got.Status != c.status || got.Header.Get(HeaderJobID) == "" {
			t.Errorf("%s %s while the model list cannot be read: %d %s (job %q), want %d from its job", c.path, c.body, got.Status, got.Body, got.Header.Get(HeaderJobID), c.status)
		}
	}
}
