package ollamatest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

func setup(t *testing.T, opts ...ollamatest.Option) (*ollamatest.Server, *ollama.HTTPClient, context.Context) {
	t.Helper()
	s := ollamatest.New(t, opts...)
	c, err := ollama.NewClient(ollama.ClientConfig{BaseURL: s.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return s, c, ctx
}

func chatBody(model, content string) []byte {
	b, _ := json.Marshal(map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": content}}})
	return b
}

// do sends a request and returns status and body.
func do(t *testing.T, ctx context.Context, c ollama.Client, method, path, body string) (int, []byte, http.Header) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	resp, err := c.Do(ctx, method, path, nil, r)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b, resp.Header
}

func frames(t *testing.T, ctx context.Context, c ollama.Client, path string, body []byte) ([]string, error) {
	t.Helper()
	var out []string
	_, err := c.Stream(ctx, path, body, func(f []byte) error {
		out = append(out, string(f))
		return nil
	})
	return out, err
}

func TestChatStreamShape(t *testing.T) {
	t.Parallel()
	s, c, ctx := setup(t, ollamatest.WithTokens(2))
	got, err := frames(t, ctx, c, "/api/chat", chatBody("tiny-a", "hello"))
	if err != nil {
		t.Fatal(err)
	}
	toks := ollamatest.Reply("tiny-a:latest", "user: hello\n", 2)
	want := []string{
		`{"model":"tiny-a","created_at":"2025-01-02T03:04:05Z","message":{"role":"assistant","content":"` + toks[0] + `"},"done":false}` + "\n",
		`{"model":"tiny-a","created_at":"2025-01-02T03:04:05Z","message":{"role":"assistant","content":"` + toks[1] + `"},"done":false}` + "\n",
	}
	if len(got) != 3 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	var final ollama.ChatResponse
	if err := json.Unmarshal([]byte(got[2]), &final); err != nil || !final.Done || final.DoneReason != "stop" || final.EvalCount != 2 || final.Message.Content != "" {
		t.Errorf("final %s (%v)", got[2], err)
	}
	// Byte-reproducible.
	again, _ := frames(t, ctx, c, "/api/chat", chatBody("tiny-a", "hello"))
	if strings.Join(again, "") != strings.Join(got, "") {
		t.Error("same request gave different bytes")
	}
	if s.Loads() != 1 {
		t.Errorf("loads %d", s.Loads())
	}
}

func TestGenerateNonStreamAndNumPredict(t *testing.T) {
	t.Parallel()
	_, c, ctx := setup(t)
	code, body, h := do(t, ctx, c, "POST", "/api/generate", `{"model":"tiny-b","prompt":"p","stream":false,"options":{"num_predict":7}}`)
	if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
		t.Fatalf("%d %s", code, body)
	}
	var r ollama.GenerateResponse
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	want := strings.Join(ollamatest.Reply("tiny-b:latest", "\np\n", 7), "")
	if !r.Done || r.Response != want || r.EvalCount != 7 {
		t.Errorf("got %+v, want response %q", r, want)
	}
}

func TestMaxTokensCapsEveryReply(t *testing.T) {
	t.Parallel()
	_, c, ctx := setup(t, ollamatest.WithMaxTokens(3))
	for _, req := range []struct{ path, body string }{
		{"/api/generate", `{"model":"tiny-b","prompt":"p","stream":false,"options":{"num_predict":1000000}}`},
		{"/api/chat", `{"model":"tiny-b","messages":[{"role":"user","content":"p"}],"stream":false,"options":{"num_predict":9}}`},
		{"/v1/completions", `{"model":"tiny-b","prompt":"p","max_tokens":50}`},
	} {
		code, body, _ := do(t, ctx, c, "POST", req.path, req.body)
		var r struct {
			EvalCount int `json:"eval_count"`
			Usage     struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		if err := json.Unmarshal(body, &r); code != 200 || err != nil || max(r.EvalCount, r.Usage.CompletionTokens) != 3 {
			t.Errorf("POST %s: %d %s, want 3 tokens", req.path, code, body)
		}
	}
}

func TestSwapCountingAndPs(t *testing.T) {
	t.Parallel()
	s, c, ctx := setup(t)
	for i, m := range []string{"tiny-a", "tiny-a", "tiny-b", "TINY-A:latest", "tiny-a"} {
		if _, err := frames(t, ctx, c, "/api/chat", chatBody(m, "x")); err != nil {
			t.Fatal(err)
		}
		ps, _, err := c.Ps(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(ps.Models) != 1 || ps.Models[0].Name != ollama.NormalizeModel(m) {
			t.Errorf("after request %d for %s, ps = %+v", i, m, ps.Models)
		}
	}
	if s.Loads() != 3 {
		t.Errorf("loads = %d, want 3", s.Loads())
	}
	// Embeddings do not swap the chat model.
	if code, body, _ := do(t, ctx, c, "POST", "/api/embed", `{"model":"tiny-embed","input":["a","b"]}`); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	if s.LoadedModel() != "tiny-a:latest" || s.Loads() != 3 {
		t.Errorf("embed swapped: loaded %q, loads %d", s.LoadedModel(), s.Loads())
	}
	s.SetLoaded("")
	if ps, _, _ := c.Ps(ctx); len(ps.Models) != 0 {
		t.Errorf("ps after unload %+v", ps)
	}
	// An empty chat loads; keep_alive 0 unloads.
	if code, body, _ := do(t, ctx, c, "POST", "/api/chat", `{"model":"tiny-b"}`); code != 200 || !bytes.Contains(body, []byte(`"done_reason":"load"`)) {
		t.Errorf("%d %s", code, body)
	}
	if s.LoadedModel() != "tiny-b:latest" {
		t.Errorf("loaded %q", s.LoadedModel())
	}
	if code, body, _ := do(t, ctx, c, "POST", "/api/generate", `{"model":"tiny-b","keep_alive":0}`); code != 200 || !bytes.Contains(body, []byte(`"done_reason":"unload"`)) {
		t.Errorf("%d %s", code, body)
	}
	if s.LoadedModel() != "" {
		t.Errorf("loaded %q after unload", s.LoadedModel())
	}
}

func TestModelErrors(t *testing.T) {
	t.Parallel()
	_, c, ctx := setup(t)
	tests := []struct {
		path, body string
		code       int
		msg        string
	}{
		{"/api/chat", string(chatBody("tiny-embed", "x")), 400, `"tiny-embed" does not support chat`},
		{"/api/generate", `{"model":"tiny-embed:latest","prompt":"x"}`, 400, `"tiny-embed:latest" does not support generate`},
		{"/api/chat", string(chatBody("x", "y")), 404, `model 'x' not found`},
		{"/api/generate", `{"model":"x","prompt":"y"}`, 404, `model 'x' not found`},
		{"/api/show", `{"model":"x"}`, 404, `model 'x' not found`},
		{"/api/embed", `{"model":"x","input":"y"}`, 404, `model "x" not found, try pulling it first`},
		{"/api/chat", `{"messages":[]}`, 400, `model is required`},
	}
	for _, tt := range tests {
		_, err := frames(t, ctx, c, tt.path, []byte(tt.body))
		var he *ollama.HTTPError
		if !errors.As(err, &he) || he.StatusCode != tt.code || he.Message != tt.msg {
			t.Errorf("%s %s: %v", tt.path, tt.body, err)
		}
	}
}

func TestFailures(t *testing.T) {
	t.Parallel()
	s, c, ctx := setup(t, ollamatest.WithTokens(4))
	body := chatBody("tiny-a", "x")
	var he *ollama.HTTPError
	var ce *ollama.ConnectionError

	s.FailNext(2, ollamatest.Fail500)
	for range 2 {
		if _, err := frames(t, ctx, c, "/api/chat", body); !errors.As(err, &he) || he.StatusCode != 500 || he.Message == "" {
			t.Fatalf("Fail500: %v", err)
		}
	}
	if _, err := frames(t, ctx, c, "/api/chat", body); err != nil {
		t.Fatalf("FailNext(2) hit a third request: %v", err)
	}

	s.FailNext(1, ollamatest.FailStatus(429, "slow down"))
	if _, err := frames(t, ctx, c, "/api/generate", []byte(`{"model":"tiny-a","prompt":"x"}`)); !errors.As(err, &he) || he.StatusCode != 429 || he.Message != "slow down" {
		t.Fatalf("FailStatus: %v", err)
	}

	// On an OpenAI route, in the shape Ollama's middleware gives its handler's errors.
	s.FailNext(1, ollamatest.FailStatus(500, "model runner has unexpectedly stopped"))
	if _, err := frames(t, ctx, c, "/v1/chat/completions", []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"x"}]}`)); !errors.As(err, &he) || he.StatusCode != 500 ||
		he.Message != `{"error":{"message":"model runner has unexpectedly stopped","type":"api_error","param":null,"code":null}}` {
		t.Fatalf("FailStatus on /v1/chat/completions: %v", err)
	}

	s.FailNext(1, ollamatest.DropConnection)
	if _, err := frames(t, ctx, c, "/api/chat", body); !errors.As(err, &ce) {
		t.Fatalf("DropConnection: %v", err)
	}

	s.FailNext(1, ollamatest.DropMidStream)
	got, err := frames(t, ctx, c, "/v1/chat/completions", []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"x"}],"stream":true}`))
	if !errors.As(err, &ce) || len(got) != 2 {
		t.Fatalf("DropMidStream (SSE): %v after %d frames", err, len(got))
	}

	s.FailNext(1, ollamatest.StreamNoDone)
	got, err = frames(t, ctx, c, "/api/chat", body)
	if err != nil || len(got) != 4 || strings.Contains(strings.Join(got, ""), `"done":true`) {
		t.Fatalf("StreamNoDone: %v %q", err, got)
	}

	s.FailNext(1, ollamatest.BadAnswer("text/plain; charset=utf-8", "Ollama is running"))
	got, err = frames(t, ctx, c, "/api/chat", body)
	if err != nil || strings.Join(got, "") != "Ollama is running" {
		t.Fatalf("BadAnswer: %v %q", err, got)
	}

	s.FailNext(1, ollamatest.SlowFirstByte(50*time.Millisecond))
	if _, err := frames(t, ctx, c, "/api/chat", body); err != nil {
		t.Fatalf("SlowFirstByte: %v", err)
	}
	calls := s.Calls()
	last := calls[len(calls)-1]
	if last.Failure != "slow first byte 50ms" || last.Ended.Sub(last.Started) < 50*time.Millisecond {
		t.Errorf("slow call %+v", last)
	}

	// Metadata routes are untouched by FailNext, but FailNextOn reaches them.
	s.FailNext(1, ollamatest.Fail500)
	if _, _, err := c.Tags(ctx); err != nil {
		t.Fatalf("FailNext hit /api/tags: %v", err)
	}
	if _, err := frames(t, ctx, c, "/api/chat", body); !errors.As(err, &he) {
		t.Fatal("pending failure lost")
	}
	s.FailNextOn("/api/tags", 1, ollamatest.DropMidStream)
	if _, _, err := c.Tags(ctx); !errors.As(err, &ce) {
		t.Fatalf("FailNextOn tags: %v", err)
	}

	s.SetDown(true)
	if _, err := c.Version(ctx); !errors.As(err, &ce) {
		t.Fatalf("SetDown: %v", err)
	}
	if _, err := frames(t, ctx, c, "/api/chat", body); !errors.As(err, &ce) {
		t.Fatalf("SetDown chat: %v", err)
	}
	s.SetDown(false)
	if _, err := c.Version(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestHoldInFlightAndWaitStarted(t *testing.T) {
	t.Parallel()
	s, c, ctx := setup(t)
	release := s.Hold("tiny-a")
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for _, path := range []string{"/api/chat", "/api/chat", "/v1/chat/completions"} {
		wg.Go(func() {
			_, err := frames(t, ctx, c, path, chatBody("tiny-a", "x"))
			errs <- err
		})
	}
	if err := s.WaitStarted(ctx, "tiny-a", 3); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitInFlight(ctx, 3); err != nil {
		t.Fatal(err)
	}
	// Embeddings are counted apart and not held.
	if code, _, _ := do(t, ctx, c, "POST", "/api/embeddings", `{"model":"tiny-embed","prompt":"x"}`); code != 200 {
		t.Fatal(code)
	}
	if s.MaxEmbedInFlight() != 1 || s.InFlight() != 3 {
		t.Errorf("embed max %d, in flight %d", s.MaxEmbedInFlight(), s.InFlight())
	}
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if s.MaxInFlight() != 3 || s.InFlight() != 0 {
		t.Errorf("max %d, now %d", s.MaxInFlight(), s.InFlight())
	}
	for _, call := range s.Calls() {
		if !call.Finished || call.Canceled {
			t.Errorf("call %+v", call)
		}
	}
}

func TestBeforeChatHook(t *testing.T) {
	t.Parallel()
	_, c, ctx := setup(t, ollamatest.WithBeforeChat(func(_ context.Context, model string) error {
		if model == "tiny-b:latest" {
			return errors.New("hook says no")
		}
		return nil
	}))
	if _, err := frames(t, ctx, c, "/api/chat", chatBody("tiny-a", "x")); err != nil {
		t.Fatal(err)
	}
	var he *ollama.HTTPError
	if _, err := frames(t, ctx, c, "/api/chat", chatBody("tiny-b", "x")); !errors.As(err, &he) || he.Message != "hook says no" {
		t.Fatal(err)
	}
}

func TestPullGateFlushesLineByLine(t *testing.T) {
	t.Parallel()
	s, c, ctx := setup(t, ollamatest.WithGatePull())
	got := make(chan string, 10)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Stream(ctx, "/api/pull", []byte(`{"model":"new-model"}`), func(f []byte) error {
			got <- string(f)
			return nil
		})
		errc <- err
	}()
	for i := range 6 {
		if err := s.PullStep(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case f := <-got:
			if !strings.HasPrefix(f, `{"`) || !strings.Contains(f, `"status"`) {
				t.Errorf("line %d = %q", i, f)
			}
			if i == 5 && f != `{"status":"success"}`+"\n" {
				t.Errorf("last line %q", f)
			}
		case <-ctx.Done():
			t.Fatalf("line %d never arrived", i)
		}
		if len(got) != 0 {
			t.Fatalf("a line arrived before its step")
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	tags, _, _ := c.Tags(ctx)
	if len(tags.Models) != 4 {
		t.Errorf("pulled model not installed: %+v", tags.Models)
	}
}

func TestOpenAIAndMetadataRoutes(t *testing.T) {
	t.Parallel()
	_, c, ctx := setup(t, ollamatest.WithTokens(3))
	blob := "sha256:" + strings.Repeat("ab", 32)
	checks := []struct {
		method, path, body string
		code               int
		contains           string
	}{
		{"GET", "/", "", 200, "Ollama is running"},
		{"HEAD", "/", "", 200, ""},
		{"GET", "/api/version", "", 200, `{"version":"0.17.0"}`},
		{"HEAD", "/api/version", "", 200, ""},
		{"POST", "/api/show", `{"model":"tiny-a"}`, 200, `"general.architecture":"llama"`},
		{"POST", "/api/show", `{"name":"tiny-embed"}`, 200, `"capabilities":["embedding"]`},
		{"POST", "/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"x"}]}`, 200, `"object":"chat.completion","created":`},
		{"POST", "/v1/chat/completions", `{"model":"nope","messages":[{"role":"user","content":"x"}]}`, 404, `"message":"model 'nope' not found"`},
		{"POST", "/v1/completions", `{"model":"tiny-a","prompt":"x"}`, 200, `"object":"text_completion"`},
		{"POST", "/v1/embeddings", `{"model":"tiny-embed","input":["a","b"]}`, 200, `"index":1`},
		{"GET", "/v1/models", "", 200, `"id":"tiny-embed:latest"`},
		{"GET", "/v1/models/tiny-a:latest", "", 200, `"owned_by":"library"`},
		{"GET", "/v1/models/zzz", "", 404, "not found"},
		{"POST", "/api/embed", `{"model":"tiny-embed","input":"a"}`, 200, `"embeddings":[[`},
		{"POST", "/api/copy", `{"source":"tiny-a","destination":"tiny-c"}`, 200, ""},
		{"POST", "/api/show", `{"model":"tiny-c"}`, 200, "model_info"},
		{"DELETE", "/api/delete", `{"model":"tiny-c"}`, 200, ""},
		{"DELETE", "/api/delete", `{"model":"tiny-c"}`, 404, "not found"},
		{"HEAD", "/api/blobs/" + blob, "", 404, ""},
		{"POST", "/api/blobs/" + blob, "data", 201, ""},
		{"HEAD", "/api/blobs/" + blob, "", 200, ""},
		{"POST", "/api/blobs/sha256:abc", "data", 400, `{"error":"invalid digest format"}`},
		{"POST", "/api/create", `{"model":"mine","from":"tiny-a","stream":false}`, 200, `{"status":"success"}`},
		{"POST", "/api/push", `{"model":"mine"}`, 200, `{"status":"success"}`},
	}
	for _, tt := range checks {
		code, body, _ := do(t, ctx, c, tt.method, tt.path, tt.body)
		if code != tt.code || !bytes.Contains(body, []byte(tt.contains)) {
			t.Errorf("%s %s: %d %s", tt.method, tt.path, code, body)
		}
	}
	got, err := frames(t, ctx, c, "/v1/completions", []byte(`{"model":"tiny-a","prompt":"x","stream":true,"max_tokens":2}`))
	if err != nil || len(got) != 4 || got[3] != "data: [DONE]\n\n" {
		t.Errorf("completion stream %v %q", err, got)
	}
	// Vectors are deterministic.
	_, a, _ := do(t, ctx, c, "POST", "/api/embeddings", `{"model":"tiny-embed","prompt":"same"}`)
	_, b, _ := do(t, ctx, c, "POST", "/api/embeddings", `{"model":"tiny-embed","prompt":"same"}`)
	if !bytes.Equal(a, b) || !bytes.HasPrefix(a, []byte(`{"embedding":[`)) {
		t.Errorf("%s vs %s", a, b)
	}
}

func BenchmarkChatStream(b *testing.B) {
	s := ollamatest.NewServer(ollamatest.Config{Tokens: 20})
	defer s.Close()
	c, err := ollama.NewClient(ollama.ClientConfig{BaseURL: s.URL})
	if err != nil {
		b.Fatal(err)
	}
	body := chatBody("tiny-a", "bench")
	for b.Loop() {
		if _, err := c.Stream(context.Background(), "/api/chat", body, func([]byte) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

// With stream_options.include_usage the OpenAI routes end, as Ollama's do, with a chunk
// that carries the usage and no choices; completion chunks carry a zero usage before it.
func TestOpenAIStreamIncludeUsage(t *testing.T) {
	t.Parallel()
	_, c, ctx := setup(t)
	for _, path := range []string{"/v1/chat/completions", "/v1/completions"} {
		got, err := frames(t, ctx, c, path, []byte(`{"model":"tiny-a","prompt":"x","messages":[{"role":"user","content":"x"}],"stream":true,"max_tokens":2,"stream_options":{"include_usage":true}}`))
		if err != nil || len(got) != 5 || got[4] != "data: [DONE]\n\n" {
			t.Fatalf("%s: %v %q", path, err, got)
		}
		if !strings.Contains(got[3], `"choices":[],"usage":{"prompt_tokens":`) || strings.Contains(got[3], `"completion_tokens":0`) {
			t.Errorf("%s: usage chunk %q", path, got[3])
		}
		zero := strings.Contains(got[0], `"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}`)
		if chat := path == "/v1/chat/completions"; zero == chat {
			t.Errorf("%s: first chunk %q", path, got[0])
		}
	}
}

// Asked for logprobs, the native routes send, as Ollama does, each token's with its
// frame and all of them with a non-streamed answer.
func TestNativeLogprobs(t *testing.T) {
	t.Parallel()
	_, c, ctx := setup(t)
	got, err := frames(t, ctx, c, "/api/generate", []byte(`{"model":"tiny-a","prompt":"x","logprobs":true,"options":{"num_predict":2}}`))
	if err != nil || len(got) != 3 || !strings.Contains(got[0], `"logprobs":[{"token":`) || strings.Contains(got[2], "logprobs") {
		t.Fatalf("%v %q", err, got)
	}
	_, body, _ := do(t, ctx, c, "POST", "/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"x"}],"logprobs":true,"stream":false,"options":{"num_predict":2}}`)
	var r ollama.ChatResponse
	var lp []map[string]any
	if json.Unmarshal(body, &r) != nil || json.Unmarshal(r.Logprobs, &lp) != nil || len(lp) != 2 {
		t.Errorf("non-streamed chat %s", body)
	}
}

// Config.Addr fixes the address: a fake stopped and started again is where its client
// expects it.
func TestServerOnAFixedAddress(t *testing.T) {
	t.Parallel()
	first := ollamatest.NewServer(ollamatest.Config{Addr: unclaimedAddr(t)})
	addr := strings.TrimPrefix(first.URL, "http://")
	first.Close()
	again := ollamatest.NewServer(ollamatest.Config{Addr: addr})
	defer again.Close()
	if again.URL != first.URL {
		t.Fatalf("started again on %s, want %s", again.URL, first.URL)
	}
	resp, err := http.Get(again.URL + "/api/version")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/version: %d", resp.StatusCode)
	}
}

// unclaimedAddr returns a free loopback address whose port lies below the ephemeral
// ranges of Linux (32768 on) and macOS (49152 on): a port asked for with ":0" by a test
// running alongside cannot take it between a server's close and its start again.
func unclaimedAddr(t *testing.T) string {
	t.Helper()
	for port := 20000 + rand.IntN(10000); ; port++ {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			addr := ln.Addr().String()
			ln.Close()
			return addr
		}
		if port >= 32000 {
			t.Fatalf("no free port below the ephemeral range: %v", err)
		}
	}
}

// Ollama's chat and generate handlers unload a model asked for with an empty call and
// keep_alive 0 before they look at what it can do: an embedding model is unloaded too,
// and so is a model whose empty generate carries images. Without keep_alive 0 an empty
// call on an embedding model is refused as any chat on it is.
func TestAnEmptyCallWithKeepAliveZeroUnloadsAnyModel(t *testing.T) {
	t.Parallel()
	s, c, ctx := setup(t)
	for _, tt := range []struct{ path, body, model string }{
		{"/api/chat", `{"model":"tiny-embed","keep_alive":0}`, "tiny-embed:latest"},
		{"/api/generate", `{"model":"tiny-embed","keep_alive":"0s"}`, "tiny-embed:latest"},
		{"/api/generate", `{"model":"tiny-a","keep_alive":0,"images":["aGk="]}`, "tiny-a:latest"},
	} {
		s.SetLoaded(tt.model)
		code, body, _ := do(t, ctx, c, "POST", tt.path, tt.body)
		if code != 200 || !bytes.Contains(body, []byte(`"done_reason":"unload"`)) {
			t.Errorf("%s %s: %d %s, want 200 with done_reason unload", tt.path, tt.body, code, body)
		}
		if got := s.LoadedModel(); got != "" {
			t.Errorf("%s %s: %q still loaded", tt.path, tt.body, got)
		}
	}
	code, body, _ := do(t, ctx, c, "POST", "/api/chat", `{"model":"tiny-embed"}`)
	if want := `\"tiny-embed\" does not support chat`; code != 400 || !bytes.Contains(body, []byte(want)) {
		t.Errorf("empty chat on an embedding model: %d %s, want 400 %s", code, body, want)
	}
}
