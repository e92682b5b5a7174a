package gateway

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// An embedding call on a chat model would load it beside the worker's jobs (Ollama runs
// it, swapping the model in, or out with keep_alive 0): it runs as a job of that model's
// queue instead, after the job that runs, and answers as the target does (ADR-0053). One
// on an embedding model still goes straight to the target, even while a job runs.
func TestEmbeddingOnAChatModelWaitsItsTurn(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	release := b.Fake.Hold("tiny-b")
	defer release()
	chatDone := make(chan *http.Response, 1)
	go func() {
		resp, _ := b.request(t, http.MethodPost, "/api/chat", chatBody("tiny-b", "hi", "false"))
		chatDone <- resp
	}()
	if err := b.Fake.WaitStarted(testCtx(t, 15*time.Second), "tiny-b", 1); err != nil {
		t.Fatal(err)
	}

	// While the worker holds tiny-b, the embedding model answers at once.
	resp, out := b.request(t, http.MethodPost, "/api/embed", []byte(`{"model":"tiny-embed","input":"x"}`))
	if resp.StatusCode != http.StatusOK || resp.Header.Get(HeaderJobID) != "" {
		t.Fatalf("embedding model: %d %s (job %q), want a direct answer", resp.StatusCode, out, resp.Header.Get(HeaderJobID))
	}

	calls := []struct{ path, body string }{
		{"/api/embed", `{"model":"tiny-a","input":["hello","world"]}`},
		{"/api/embed", `{"model":"tiny-a","input":"","keep_alive":0}`}, // an unload, if it went straight
		{"/api/embeddings", `{"model":"tiny-a","prompt":"hello"}`},
		{"/v1/embeddings", `{"model":"tiny-a","input":"hello"}`},
	}
	type answer struct {
		resp *http.Response
		body []byte
	}
	answers := make([]answer, len(calls))
	var wg sync.WaitGroup
	for i, c := range calls {
		wg.Go(func() {
			resp, out := b.request(t, http.MethodPost, c.path, []byte(c.body))
			answers[i] = answer{resp, out}
		})
	}
	// Each call is a job waiting behind the one that runs (still in the queue itself).
	eventually(t, 15*time.Second, "the embedding calls queued", func() bool {
		n, err := b.Broker.Store.QueueLen(context.Background())
		return err == nil && n == uint64(1+len(calls))
	})
	for _, c := range b.Fake.Calls() {
		if c.Model == "tiny-a:latest" && c.Path != "/api/show" {
			t.Fatalf("%s %s reached the target while another model's job ran", c.Method, c.Path)
		}
	}
	release()
	wg.Wait()
	if resp := <-chatDone; resp.StatusCode != http.StatusOK {
		t.Errorf("the chat that ran first: %d", resp.StatusCode)
	}
	for i, c := range calls {
		got := answers[i]
		want, wantBody := direct(t, b.Fake, http.MethodPost, c.path, []byte(c.body))
		if got.resp.StatusCode != want.StatusCode || got.resp.Header.Get(HeaderJobID) == "" ||
			got.resp.Header.Get("Content-Type") != want.Header.Get("Content-Type") || !bytes.Equal(got.body, wantBody) {
			t.Errorf("%s %s: %d %q (job %q) %s\nwant %d %q %s", c.path, c.body, got.resp.StatusCode, got.resp.Header.Get("Content-Type"),
				got.resp.Header.Get(HeaderJobID), got.body, want.StatusCode, want.Header.Get("Content-Type"), wantBody)
		}
	}
	// The capabilities are read once per model.
	shows := 0
	for _, c := range b.Fake.Calls() {
		if c.Path == "/api/show" && c.Model == "tiny-a:latest" {
			shows++
		}
	}
	if shows != 1 {
		t.Errorf("tiny-a's capabilities read %d times, want once", shows)
	}
}

// showTarget changes the gateway's view of /api/show: answer, when set, replaces the
// target's answer; gate, when set, holds the call until it is closed.
type showTarget struct {
	ollama.Client
	answer string
	gate   chan struct{}
	shows  *atomic.Int32 // counts the /api/show calls, when set
}

func (s showTarget) Do(ctx context.Context, method, path string, header http.Header, body io.Reader) (*http.Response, error) {
	if path != "/api/show" {
		return s.Client.Do(ctx, method, path, header, body)
	}
	if s.shows != nil {
		s.shows.Add(1)
	}
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if s.answer != "" {
		return &http.Response{StatusCode: http.StatusOK, Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(s.answer))}, nil
	}
	return s.Client.Do(ctx, method, path, header, body)
}

// An Ollama whose /api/show lists no capabilities (before 0.6) tells nothing: the
// embedding calls go straight to it, as before ADR-0053, rather than all be queued.
func TestEmbeddingWithoutCapabilitiesGoesStraight(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, withGateway(func(c *Config) {
		c.Target = showTarget{Client: c.Target, answer: `{"details":{"family":"llama"}}`}
	}))
	for _, model := range []string{"tiny-embed", "tiny-a"} {
		resp, out := b.request(t, http.MethodPost, "/api/embed", fmt.Appendf(nil, `{"model":%q,"input":"x"}`, model))
		if resp.StatusCode != http.StatusOK || resp.Header.Get(HeaderJobID) != "" {
			t.Errorf("%s: %d %s (job %q), want a direct answer", model, resp.StatusCode, out, resp.Header.Get(HeaderJobID))
		}
	}
}

// The capability look-up that callers share does not end with the caller that began it:
// one that hangs up while it runs leaves it going for the next callers, whose calls on a
// chat model are queued, not sent straight at the target for want of an answer.
func TestEmbeddingLookUpOutlivesItsFirstCaller(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	var shows atomic.Int32
	b := newQueuedBundle(t, nil, withGateway(func(c *Config) {
		c.Target = showTarget{Client: c.Target, gate: gate, shows: &shows}
	}))
	body := []byte(`{"model":"tiny-a","input":"x"}`)
	ctx, hangUp := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.URL+"/api/embed", bytes.NewReader(body))
		if err == nil {
			var resp *http.Response
			if resp, err = http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
		first <- err
	}()
	eventually(t, 15*time.Second, "the first look-up begun", func() bool { return shows.Load() == 1 })
	hangUp() // while its look-up is held
	<-first
	second := make(chan *http.Response, 1)
	go func() {
		resp, _ := b.request(t, http.MethodPost, "/api/embed", body)
		second <- resp
	}()
	close(gate)
	if resp := <-second; resp.StatusCode != http.StatusOK || resp.Header.Get(HeaderJobID) == "" || shows.Load() != 1 {
		t.Fatalf("the second caller: %d (job %q) after %d look-ups, want its call queued on the first look-up",
			resp.StatusCode, resp.Header.Get(HeaderJobID), shows.Load())
	}
}
