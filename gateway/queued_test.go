package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// queuedBundle is the shared test bundle plus a real worker running its jobs.
type queuedBundle struct {
	*testBundle
	Worker *worker.Worker
}

// newQueuedBundle starts a gateway, the fake and a worker; wcfg adjusts the worker's
// Config (Store, Target and Inventory are set).
func newQueuedBundle(t testing.TB, wcfg func(*worker.Config), opts ...bundleOption) *queuedBundle {
	t.Helper()
	b := &queuedBundle{testBundle: newTestBundle(t, opts...)}
	cfg := worker.Config{
		Store: b.Broker.Store, Target: b.Target, Inventory: b.Inv,
		RetryDelay: 10 * time.Millisecond, IdlePoll: 50 * time.Millisecond,
		EarlyCall: true, // as foreman serve runs it on its embedded server
	}
	if wcfg != nil {
		wcfg(&cfg)
	}
	b.Worker = startQueuedWorker(t, cfg)
	return b
}

// startQueuedWorker runs a worker until the test ends.
func startQueuedWorker(t testing.TB, cfg worker.Config) *worker.Worker {
	t.Helper()
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("worker: %v", err)
		}
	})
	return w
}

// chatBody is an Ollama /api/chat body; stream "" leaves the field out.
func chatBody(model, content, stream string) []byte {
	s := ""
	if stream != "" {
		s = `,"stream":` + stream
	}
	return fmt.Appendf(nil, `{"model":%q,"messages":[{"role":"user","content":%q}]%s}`, model, content, s)
}

// routeBody is a request body for path asking model about content.
func routeBody(path, model, content, stream string) []byte {
	s := ""
	if stream != "" {
		s = `,"stream":` + stream
	}
	switch path {
	case "/api/generate", "/v1/completions":
		return fmt.Appendf(nil, `{"model":%q,"prompt":%q%s}`, model, content, s)
	}
	return chatBody(model, content, stream)
}

type rawResponse struct {
	Status int
	CType  string
	Header http.Header
	Body   []byte
}

// post sends body to base+path and reads the whole answer; safe in goroutines.
func post(t testing.TB, ctx context.Context, base, path string, body []byte) rawResponse {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("POST %s: %v", path, err) // not Fatal: goroutines call post too
		return rawResponse{}
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("POST %s: read: %v", path, err)
	}
	return rawResponse{Status: resp.StatusCode, CType: resp.Header.Get("Content-Type"), Header: resp.Header, Body: out}
}

// watchStates reports every state event of every job, in order.
func watchStates(t testing.TB, nc *nats.Conn) <-chan *broker.Job {
	t.Helper()
	ch := make(chan *broker.Job, 1024)
	sub, err := nc.Subscribe(broker.StateWildcard, func(m *nats.Msg) {
		if j, err := broker.DecodeJob(m.Data); err == nil {
			ch <- j
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return ch
}

// waitState waits for the first event matching cond.
func waitState(t testing.TB, ctx context.Context, ch <-chan *broker.Job, what string, cond func(*broker.Job) bool) *broker.Job {
	t.Helper()
	for {
		select {
		case j := <-ch:
			if cond(j) {
				return j
			}
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		}
	}
}

// waitRecord polls job id's record until cond holds.
func waitRecord(t testing.TB, ctx context.Context, st *broker.Store, id string, cond func(*broker.Job) bool) *broker.Job {
	t.Helper()
	for {
		j, _, err := st.Get(ctx, id)
		if err == nil && cond(j) {
			return j
		}
		select {
		case <-ctx.Done():
			t.Fatalf("job %s: condition not reached: %v (last %+v)", id, ctx.Err(), j)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func TestQueuedConcurrentChatsSerialized(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, withFake(ollamatest.WithModels(
		ollamatest.Model{Name: "tiny-a"}, ollamatest.Model{Name: "tiny-b"}, ollamatest.Model{Name: "tiny-c"},
	)))
	ctx := testCtx(t, 60*time.Second)
	models := []string{"tiny-a", "tiny-b", "tiny-c"}
	const n = 20
	var wg sync.WaitGroup
	got := make([]rawResponse, n)
	for i := range n {
		wg.Go(func() {
			stream := []string{"", "true", "false"}[i%3]
			got[i] = post(t, ctx, b.URL, "/api/chat", chatBody(models[i%3], fmt.Sprintf("question %d", i), stream))
		})
	}
	wg.Wait()
	for i := range n {
		stream := []string{"", "true", "false"}[i%3]
		want := post(t, ctx, b.Fake.URL, "/api/chat", chatBody(models[i%3], fmt.Sprintf("question %d", i), stream))
		if got[i].Status != 200 || !bytes.Equal(got[i].Body, want.Body) {
			t.Errorf("request %d: status %d body\n%s\nwant\n%s", i, got[i].Status, got[i].Body, want.Body)
		}
	}
	if m := b.Fake.MaxInFlight(); m != 1 {
		t.Errorf("the fake ran %d requests at once, want 1", m)
	}
}

func TestQueuedRoutesByteIdentical(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 60*time.Second)
	for _, path := range []string{"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"} {
		for _, stream := range []string{"", "true", "false"} {
			body := routeBody(path, "tiny-a", "why is the sky blue", stream)
			got := post(t, ctx, b.URL, path, body)
			want := post(t, ctx, b.Fake.URL, path, body)
			name := fmt.Sprintf("%s stream=%q", path, stream)
			if got.Status != want.Status || got.CType != want.CType || !bytes.Equal(got.Body, want.Body) {
				t.Errorf("%s: got %d %q\n%s\nwant %d %q\n%s", name, got.Status, got.CType, got.Body, want.Status, want.CType, want.Body)
			}
			id := got.Header.Get(HeaderJobID)
			if err := broker.ValidateID(id); err != nil {
				t.Errorf("%s: %s %q: %v", name, HeaderJobID, id, err)
				continue
			}
			// The final marker goes out before the record turns terminal.
			j := waitRecord(t, ctx, b.Broker.Store, id, func(j *broker.Job) bool { return j.State.Terminal() })
			if j.State != broker.StateDone || !j.Sync {
				t.Errorf("%s: job %+v", name, j)
			}
		}
	}
}

func TestQueuedModelNotFoundAfterRepoll(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	tagsCalls := func() int {
		n := 0
		for _, c := range b.Fake.Calls() {
			if c.Path == "/api/tags" {
				n++
			}
		}
		return n
	}

	before := tagsCalls()
	got := post(t, ctx, b.URL, "/api/chat", chatBody("nope", "hi", "false"))
	if got.Status != 404 || errorBody(t, got.Body) != `model 'nope' not found` {
		t.Errorf("unknown model: %d %s", got.Status, got.Body)
	}
	if tagsCalls() != before+1 {
		t.Errorf("no re-poll of /api/tags before answering 404")
	}
	if got.Header.Get(HeaderJobID) != "" {
		t.Errorf("a job was created for an unknown model")
	}

	// A model pulled since the last poll is found by the re-poll and runs.
	b.Fake.AddModel(ollamatest.Model{Name: "fresh"})
	got = post(t, ctx, b.URL, "/api/chat", chatBody("fresh", "hi", "false"))
	want := post(t, ctx, b.Fake.URL, "/api/chat", chatBody("fresh", "hi", "false"))
	if got.Status != 200 || !bytes.Equal(got.Body, want.Body) {
		t.Errorf("fresh model: %d %s", got.Status, got.Body)
	}
}

func TestQueuedBadRequests(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, withGateway(func(c *Config) { c.MaxBodyBytes = 1024 }))
	ctx := testCtx(t, 30*time.Second)
	cases := []struct {
		path, body string
		status     int
		msg        string
	}{
		{"/api/chat", `{"model":"tiny-a",`, 400, "invalid JSON body"},
		{"/api/generate", `{"prompt":"hi"}`, 404, "model '' not found"},
		{"/api/chat", `{"name":"tiny-a","messages":[]}`, 400, "model is required"},
		{"/v1/chat/completions", ``, 400, "missing request body"},
		{"/api/chat", `{"model":"tiny-a\r","messages":[]}`, 400, "invalid model name"},
		{"/v1/chat/completions", `{"model":" tiny-a","messages":[{"role":"user","content":"x"}]}`, 400, "invalid model name"},
		// The generate routes take names Ollama cannot parse, never a control character.
		{"/api/generate", `{"model":"tiny-a\u001b[2J","prompt":"hi"}`, 400, "invalid model name"},
		{"/v1/completions", `{"model":"tiny\u0085a","prompt":"hi"}`, 400, "invalid model name"},
		{"/v1/completions", `"tiny-a"`, 400, "invalid JSON body"},
		// Names Ollama cannot parse: its chat handler answers 400, its generate handler 404.
		{"/api/chat", `{"model":"tiny-a:","messages":[]}`, 400, "model is required"},
		{"/v1/chat/completions", `{"model":"tiny-a:latest:latest","messages":[{"role":"user","content":"x"}]}`, 400, "model is required"},
		{"/api/generate", `{"model":":latest","prompt":"hi"}`, 404, "model ':latest' not found"},
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"` + strings.Repeat("x", 2000) + `"}]}`, 413, "request body too large"},
	}
	for _, c := range cases {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		if got.Status != c.status || !strings.HasPrefix(errorBody(t, got.Body), c.msg) {
			t.Errorf("%s %.40s: %d %s, want %d %q", c.path, c.body, got.Status, got.Body, c.status, c.msg)
		}
	}
	for _, c := range b.Fake.Calls() {
		if c.Method == http.MethodPost {
			t.Errorf("a bad request reached the target: %+v", c)
		}
	}
}

// A model named in full, as Ollama resolves it (its default host and namespace, a
// scheme), is the model /api/tags lists: it is queued and answered as Ollama answers it,
// on the loaded model's queue.
func TestQueuedModelNamedInFull(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	for _, name := range []string{"library/tiny-a", "registry.ollama.ai/library/tiny-a:latest", "https://registry.ollama.ai/library/Tiny-A"} {
		for _, path := range []string{"/api/chat", "/v1/chat/completions"} {
			body := routeBody(path, name, "hi", "false")
			got := post(t, ctx, b.URL, path, body)
			want := post(t, ctx, b.Fake.URL, path, body)
			if got.Status != 200 || want.Status != 200 || got.Header.Get(HeaderJobID) == "" {
				t.Errorf("%s %s: %d %s (the target: %d %s)", path, name, got.Status, got.Body, want.Status, want.Body)
			}
		}
		if tok, err := broker.ModelToken(name); err != nil || tok != mustToken(t, "tiny-a") {
			t.Errorf("%s queues under %q (%v), not tiny-a's queue", name, tok, err)
		}
	}
	for _, path := range []string{"/api/show", "/api/embed"} {
		got := post(t, ctx, b.URL, path, []byte(`{"model":"registry.ollama.ai/library/tiny-embed","input":"x"}`))
		if got.Status != 200 {
			t.Errorf("%s in full: %d %s", path, got.Status, got.Body)
		}
	}
}

func mustToken(t *testing.T, model string) string {
	t.Helper()
	tok, err := broker.ModelToken(model)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestQueuedEmbeddingModelErrorPassedThrough(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	for _, path := range []string{"/api/chat", "/api/generate", "/v1/chat/completions"} {
		body := routeBody(path, "tiny-embed", "hi", "")
		got := post(t, ctx, b.URL, path, body)
		want := post(t, ctx, b.Fake.URL, path, body)
		if got.Status != 400 || want.Status != 400 || !bytes.Equal(bytes.TrimSpace(got.Body), bytes.TrimSpace(want.Body)) {
			t.Errorf("%s: got %d %s, the target says %d %s", path, got.Status, got.Body, want.Status, want.Body)
		}
	}
}

func TestQueuedQueueFull(t *testing.T) {
	t.Parallel()
	// No worker: the first job stays queued and fills the queue of one.
	b := newTestBundle(t, withBroker(brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 1 })))
	ctx := testCtx(t, 30*time.Second)
	states := watchStates(t, b.Broker.Conn)

	firstCtx, cancelFirst := context.WithCancel(ctx)
	firstDone := make(chan rawResponse, 1)
	go func() {
		req, _ := http.NewRequestWithContext(firstCtx, http.MethodPost, b.URL+"/api/chat", bytes.NewReader(chatBody("tiny-a", "1", "")))
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		firstDone <- rawResponse{}
	}()
	first := waitState(t, ctx, states, "first job queued", func(j *broker.Job) bool { return j.State == broker.StateQueued })

	got := post(t, ctx, b.URL, "/api/chat", chatBody("tiny-b", "2", ""))
	if got.Status != 503 || errorBody(t, got.Body) != "queue full" || got.Header.Get("Retry-After") == "" {
		t.Errorf("second request: %d %s, Retry-After %q", got.Status, got.Body, got.Header.Get("Retry-After"))
	}
	cancelFirst()
	<-firstDone
	waitRecord(t, ctx, b.Broker.Store, first.ID, func(j *broker.Job) bool { return j.State == broker.StateCanceled })
}

// gapCase publishes frames by hand for the job a request creates (no worker runs).
func gapCase(t *testing.T, frames func(id string) []*nats.Msg) rawResponse {
	t.Helper()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	states := watchStates(t, b.Broker.Conn)
	res := make(chan rawResponse, 1)
	go func() { res <- post(t, ctx, b.URL, "/api/chat", chatBody("tiny-a", "hi", "")) }()
	job := waitState(t, ctx, states, "job queued", func(j *broker.Job) bool { return j.State == broker.StateQueued })
	for _, m := range frames(job.ID) {
		if err := b.Broker.Conn.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case r := <-res:
		if r.Header.Get(HeaderJobID) != job.ID {
			t.Errorf("%s %q, want %s", HeaderJobID, r.Header.Get(HeaderJobID), job.ID)
		}
		return r
	case <-ctx.Done():
		t.Fatal("the request hung on a stream gap")
	}
	return rawResponse{}
}

func jobFrame(id string, seq int, data string, hdr ...string) *nats.Msg {
	m := nats.NewMsg(broker.StreamSubject(id))
	m.Header.Set(broker.HeaderSeq, fmt.Sprint(seq))
	for i := 0; i+1 < len(hdr); i += 2 {
		m.Header.Set(hdr[i], hdr[i+1])
	}
	m.Data = []byte(data)
	return m
}

func TestQueuedStreamGapMidStream(t *testing.T) {
	t.Parallel()
	got := gapCase(t, func(id string) []*nats.Msg {
		return []*nats.Msg{
			jobFrame(id, 1, "{\"message\":{\"content\":\"a\"},\"done\":false}\n", broker.HeaderContentType, "application/x-ndjson"),
			jobFrame(id, 3, "{\"message\":{\"content\":\"c\"},\"done\":false}\n"),
		}
	})
	lines := strings.Split(strings.TrimSuffix(string(got.Body), "\n"), "\n")
	if got.Status != 200 || len(lines) != 2 || lines[0] != `{"message":{"content":"a"},"done":false}` {
		t.Fatalf("got %d %q", got.Status, got.Body)
	}
	if msg := errorBody(t, []byte(lines[1])); !strings.HasPrefix(msg, "stream gap:") {
		t.Errorf("last line %q", lines[1])
	}
}

func TestQueuedStreamGapBeforeFirstByte(t *testing.T) {
	t.Parallel()
	got := gapCase(t, func(id string) []*nats.Msg {
		return []*nats.Msg{jobFrame(id, 2, "{}\n", broker.HeaderContentType, "application/x-ndjson")}
	})
	if got.Status != 502 || !strings.HasPrefix(errorBody(t, got.Body), "stream gap: expected frame 1, got 2") {
		t.Errorf("got %d %s", got.Status, got.Body)
	}
}

func TestQueuedClientDisconnectCancelsQueuedJob(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	states := watchStates(t, b.Broker.Conn)
	release := b.Fake.Hold("tiny-a")
	defer release()

	busy := make(chan rawResponse, 1)
	go func() { busy <- post(t, ctx, b.URL, "/api/chat", chatBody("tiny-a", "long", "false")) }()
	if err := b.Fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}

	leaveCtx, leave := context.WithCancel(ctx)
	left := make(chan struct{})
	go func() {
		defer close(left)
		req, _ := http.NewRequestWithContext(leaveCtx, http.MethodPost, b.URL+"/api/chat", bytes.NewReader(chatBody("tiny-b", "bye", "")))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	queued := waitState(t, ctx, states, "tiny-b queued", func(j *broker.Job) bool {
		return j.State == broker.StateQueued && j.Model == "tiny-b"
	})
	// The cancel deletes the job's queue message by the sequence its submit stored it at:
	// no look for it in the queue, which reads the job's subject from its submit on (the
	// only reads of the queue that start at a time).
	looks := countRequests(t, b, "$JS.API.STREAM.MSG.GET."+broker.QueueStream, `"start_time"`)
	leave()
	<-left
	j := waitRecord(t, ctx, b.Broker.Store, queued.ID, func(j *broker.Job) bool { return j.State.Terminal() })
	if j.State != broker.StateCanceled || j.Error != "client disconnected" {
		t.Errorf("abandoned job: %s %q", j.State, j.Error)
	}
	// The cancel writes the record, then deletes the message: the record can be read
	// canceled a moment before the message is gone.
	eventually(t, 10*time.Second, "the canceled job's queue message deleted", func() bool {
		n, err := b.Broker.Store.QueueLen(ctx)
		return err == nil && n == 1
	})
	if n := looks(); n != 0 {
		t.Errorf("the cancel looked for its job's queue message %d times, want none", n)
	}

	release()
	if r := <-busy; r.Status != 200 {
		t.Errorf("busy request: %d %s", r.Status, r.Body)
	}
	// A later tiny-b request runs; had the canceled one stayed queued it would run first.
	if r := post(t, ctx, b.URL, "/api/chat", chatBody("tiny-b", "later", "false")); r.Status != 200 {
		t.Fatalf("later request: %d %s", r.Status, r.Body)
	}
	n := 0
	for _, c := range b.Fake.Calls() {
		if c.Model == "tiny-b:latest" && c.Path == "/api/chat" { // not the look-up of its capabilities
			n++
		}
	}
	if n != 1 {
		t.Errorf("the target saw %d tiny-b chats, want 1 (the canceled job must not run)", n)
	}
}

func TestQueuedClientDisconnectAbortsRunningJob(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	states := watchStates(t, b.Broker.Conn)
	release := b.Fake.Hold("tiny-a")
	defer release()

	leaveCtx, leave := context.WithCancel(ctx)
	left := make(chan struct{})
	go func() {
		defer close(left)
		req, _ := http.NewRequestWithContext(leaveCtx, http.MethodPost, b.URL+"/api/chat", bytes.NewReader(chatBody("tiny-a", "bye", "")))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	if err := b.Fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	job := waitState(t, ctx, states, "job running", func(j *broker.Job) bool { return j.State == broker.StateQueued })
	leave()
	<-left
	chat := func(calls []ollamatest.Call) (ollamatest.Call, bool) {
		for _, c := range calls {
			if c.Path == "/api/chat" {
				return c, true
			}
		}
		return ollamatest.Call{}, false
	}
	err := b.Fake.WaitFor(ctx, func(calls []ollamatest.Call) bool {
		c, ok := chat(calls)
		return ok && c.Finished
	})
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := chat(b.Fake.Calls()); !c.Canceled {
		t.Errorf("the target's call was not canceled: %+v", c)
	}
	if j := waitRecord(t, ctx, b.Broker.Store, job.ID, func(j *broker.Job) bool { return j.State.Terminal() }); j.State != broker.StateCanceled {
		t.Errorf("job ended %s", j.State)
	}
}

func TestQueuedTargetDownThenUp(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, withBroker(brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 1000 })))
	ctx := testCtx(t, 30*time.Second)
	b.Fake.SetDown(true)

	// The target is down: an unknown model cannot be checked, so it is a 502 at once…
	if r := post(t, ctx, b.URL, "/api/chat", chatBody("unknown", "hi", "false")); r.Status != 502 {
		t.Errorf("unknown model with the target down: %d %s", r.Status, r.Body)
	}
	// …while a known one is queued and runs when the target is back.
	body := chatBody("tiny-a", "patience", "")
	failed := func(calls []ollamatest.Call) (n int) {
		for _, c := range calls {
			if c.Failure != "" {
				n++
			}
		}
		return n
	}
	before := failed(b.Fake.Calls())
	res := make(chan rawResponse, 1)
	go func() { res <- post(t, ctx, b.URL, "/api/chat", body) }()
	// The worker meets the down target once the job is queued: by the job's call, or,
	// as the polls already found it down, by its probe before taking the job.
	err := b.Fake.WaitFor(ctx, func(calls []ollamatest.Call) bool { return failed(calls) > before })
	if err != nil {
		t.Fatal(err)
	}
	b.Fake.SetDown(false)
	got := <-res
	want := post(t, ctx, b.Fake.URL, "/api/chat", body)
	if got.Status != 200 || !bytes.Equal(got.Body, want.Body) {
		t.Errorf("got %d\n%s\nwant\n%s", got.Status, got.Body, want.Body)
	}
}

func TestQueuedStreamWithoutDoneWrittenAsIs(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	for _, path := range []string{"/api/chat", "/v1/chat/completions"} {
		stream := ""
		if strings.HasPrefix(path, "/v1") {
			stream = "true"
		}
		body := routeBody(path, "tiny-a", "cut", stream)
		b.Fake.FailNext(1, ollamatest.StreamNoDone)
		got := post(t, ctx, b.URL, path, body)
		b.Fake.FailNext(1, ollamatest.StreamNoDone)
		want := post(t, ctx, b.Fake.URL, path, body)
		if stream != "" {
			// An OpenAI stream cut before its [DONE] is a runner that failed (Ollama's
			// writer drops its error line): the job failed, and the client hears so after
			// what came, rather than take part of an answer for all of it.
			want.Body = append(want.Body, `data: {"error":{"message":"the target's stream ended before its answer was complete (its runner may have failed)","type":"api_error"}}`+"\n\n"...)
		}
		if got.Status != 200 || !bytes.Equal(got.Body, want.Body) {
			t.Errorf("%s: got %d\n%s\nwant\n%s", path, got.Status, got.Body, want.Body)
		}
	}
}

// An error the target sends inside a 200 stream reaches the client once, as the target
// sent it, and the job fails.
func TestQueuedStreamErrorWrittenOnce(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	for _, path := range []string{"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"} {
		stream := ""
		if strings.HasPrefix(path, "/v1") {
			stream = "true"
		}
		body := routeBody(path, "tiny-a", "boom", stream)
		b.Fake.FailNext(1, ollamatest.StreamError("boom"))
		got := post(t, ctx, b.URL, path, body)
		b.Fake.FailNext(1, ollamatest.StreamError("boom"))
		want := post(t, ctx, b.Fake.URL, path, body)
		if got.Status != 200 || !bytes.Equal(got.Body, want.Body) {
			t.Errorf("%s: got %d\n%s\nwant\n%s", path, got.Status, got.Body, want.Body)
		}
		j := waitRecord(t, ctx, b.Broker.Store, got.Header.Get(HeaderJobID), func(j *broker.Job) bool { return j.State.Terminal() })
		if j.State != broker.StateFailed || j.Error != "boom" {
			t.Errorf("%s: job %s %q, want failed \"boom\"", path, j.State, j.Error)
		}
	}
}

// waitingChat posts a chat (stream as chatBody takes it) in the background and returns,
// once its job is queued, the channel of its answer and the job's id.
func waitingChat(t *testing.T, ctx context.Context, b *testBundle, stream string) (<-chan rawResponse, string) {
	t.Helper()
	states := watchStates(t, b.Broker.Conn)
	res := make(chan rawResponse, 1)
	go func() { res <- post(t, ctx, b.URL, "/api/chat", chatBody("tiny-a", "waiting", stream)) }()
	for j := range states {
		if j.State == broker.StateQueued {
			return res, j.ID
		}
	}
	t.Fatal("no queued state")
	return nil, ""
}

// At shutdown, once the worker has stopped, a sync client whose job never ran gets 503
// and its job is canceled (nobody would wait for it after a restart); AnswerWaiting returns
// when every such response has ended.
func TestAnswerWaitingAnswersWaitingClients(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t) // no worker: the job stays queued
	ctx := testCtx(t, 30*time.Second)
	res, id := waitingChat(t, ctx, b, "")
	if err := b.GW.AnswerWaiting(ctx); err != nil {
		t.Fatalf("AnswerWaiting: %v", err)
	}
	got := <-res
	if got.Status != http.StatusServiceUnavailable || !strings.Contains(errorBody(t, got.Body), "shutting down") {
		t.Fatalf("waiting client got %d %s, want 503 shutting down", got.Status, got.Body)
	}
	j, _, err := b.Broker.Store.Get(ctx, id)
	if err != nil || j.State != broker.StateCanceled {
		t.Fatalf("job after shutdown: %+v %v, want canceled", j, err)
	}
	if j.Error != "foreman shut down before the job ran" || j.Attempt != 0 {
		t.Errorf("job canceled with %q after %d attempts, want it to say it never ran", j.Error, j.Attempt)
	}
	if n, _ := b.Broker.Store.QueueLen(ctx); n != 0 {
		t.Fatalf("queue still holds %d jobs", n)
	}
}

// On a store of its own (the embedded server), a sync client whose job has not started
// is answered 503 as soon as foreman begins to stop (Stopping), before its worker has
// stopped: no other worker could run the job. Its job is canceled as never run.
func TestStoppingAnswersAWaitingClientOnAStoreOfItsOwn(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withBroker(brokertest.WithStore(func(c *broker.Config) { c.Exclusive = true }))) // no worker: the job stays queued
	ctx := testCtx(t, 30*time.Second)
	res, id := waitingChat(t, ctx, b, "")
	b.GW.Stopping()
	got := <-res
	if got.Status != http.StatusServiceUnavailable || !strings.Contains(errorBody(t, got.Body), "shutting down") {
		t.Fatalf("waiting client got %d %s, want 503 shutting down", got.Status, got.Body)
	}
	j, _, err := b.Broker.Store.Get(ctx, id)
	if err != nil || j.State != broker.StateCanceled || j.Error != "foreman shut down before the job ran" || j.Attempt != 0 {
		t.Fatalf("job after Stopping: %+v %v, want canceled as never run", j, err)
	}
	if n, _ := b.Broker.Store.QueueLen(ctx); n != 0 {
		t.Fatalf("queue still holds %d jobs", n)
	}
}

// On a shared NATS, Stopping leaves a waiting sync client be: another foreman's worker
// may run its job before this foreman has stopped, and the client then gets its answer.
func TestStoppingLeavesAWaitingClientOnASharedNATS(t *testing.T) {
	t.Parallel()
	var w *worker.Worker
	b := newTestBundle(t, withGateway(func(c *Config) {
		var err error
		w, err = worker.New(worker.Config{Store: c.Store, Target: c.Target, Inventory: c.Inventory})
		if err != nil {
			t.Fatal(err)
		}
	}))
	ctx := testCtx(t, 30*time.Second)
	res, _ := waitingChat(t, ctx, b, "false")
	b.GW.Stopping()
	runUntilCleanup(t, "worker", w.Run) // the other foreman's worker, say
	got := <-res
	if got.Status != http.StatusOK || !strings.Contains(string(got.Body), `"done":true`) {
		t.Fatalf("waiting client got %d %s, want its answer", got.Status, got.Body)
	}
}

// At shutdown, a sync job the stopping worker cut off mid-stream is canceled as one that
// ran: its reason says so and its attempt counts. Its client, which had part of the
// answer, gets an error line.
func TestAnswerWaitingCancelsACutOffJobAsRun(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	b.Fake.FailNext(1, ollamatest.StallMidStream) // two tokens, then nothing until the call ends
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.URL+"/api/chat", bytes.NewReader(chatBody("tiny-a", "cut off", "")))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, `"done":false`) {
		t.Fatalf("first line %q %v, want a token", line, err)
	}
	expired, cancel := context.WithCancel(ctx)
	cancel()
	if err := b.Worker.Stop(expired); err != nil {
		t.Fatal(err)
	}
	if err := b.GW.AnswerWaiting(ctx); err != nil {
		t.Fatalf("AnswerWaiting: %v", err)
	}
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), `{"error":"foreman is shutting down`) {
		t.Errorf("client's stream ended with %q, want the shutdown's error line", rest)
	}
	id := resp.Header.Get(HeaderJobID)
	j := waitRecord(t, ctx, b.Broker.Store, id, func(j *broker.Job) bool { return j.State.Terminal() })
	if j.State != broker.StateCanceled || j.Error != "foreman shut down while the job ran" || j.Attempt != 1 || j.StartedAt == nil {
		t.Errorf("job ended %s %q after %d attempts (started %v), want canceled as cut off while it ran, its attempt counted", j.State, j.Error, j.Attempt, j.StartedAt)
	}
}

// A non-streamed response larger than a NATS message crosses the queue in pieces and still
// reaches the client byte for byte.
func TestQueuedLargeResponseByteExact(t *testing.T) {
	t.Parallel()
	// A server with small messages, as TestLargeFrameRelayedInPieces in worker: an answer
	// larger than one takes 20,000 tokens, not the 300,000 a 1 MiB message would (each
	// line parsed as the answer is joined, ADR-0050), which took a loaded machine under
	// -race longer than the test's wait.
	b := newQueuedBundle(t, nil, withBroker(brokertest.WithNATS(func(c *natsd.Config) { c.MaxPayload = 64 << 10 })))
	ctx := testCtx(t, 60*time.Second)
	for _, stream := range []string{"false"} {
		body := []byte(`{"model":"tiny-a","prompt":"big","stream":` + stream + `,"options":{"num_predict":20000}}`)
		want := post(t, ctx, b.Fake.URL, "/api/generate", body)
		got := post(t, ctx, b.URL, "/api/generate", body)
		if stream == "false" && len(want.Body) <= int(b.Broker.Conn.MaxPayload()) {
			t.Fatalf("direct body %d bytes; the test needs more than a NATS message", len(want.Body))
		}
		if got.Status != 200 || !bytes.Equal(got.Body, want.Body) {
			t.Fatalf("stream %s: %d, %d bytes; want 200, the target's %d bytes", stream, got.Status, len(got.Body), len(want.Body))
		}
	}
}

// countRequests counts the NATS requests to subject, from then on, whose data contains
// part: the count it returns is of those that went by before it is called.
func countRequests(t *testing.T, b *queuedBundle, subject, part string) func() int {
	t.Helper()
	nc, err := b.Broker.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return func() int {
		// The connection's reader queues each request on the subscription before it
		// takes the flush's answer.
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			m, err := sub.NextMsg(0)
			if err != nil {
				return n
			}
			if bytes.Contains(m.Data, []byte(part)) {
				n++
			}
		}
	}
}
