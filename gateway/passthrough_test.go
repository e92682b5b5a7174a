package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// hookClient lets a test intercept the gateway's raw pass-through calls.
type hookClient struct {
	ollama.Client
	do func(ctx context.Context, method, path string, header http.Header, body io.Reader) (*http.Response, error)
}

func (h *hookClient) Do(ctx context.Context, method, path string, header http.Header, body io.Reader) (*http.Response, error) {
	return h.do(ctx, method, path, header, body)
}

// direct calls the fake itself, for comparison with what the gateway relays.
func direct(t *testing.T, fake *ollamatest.Server, method, path string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t, 10*time.Second), method, fake.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, out
}

// wantError checks a foreman {"error": ...} reply.
func wantError(t *testing.T, resp *http.Response, body []byte, status int, contains string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q, want JSON", ct)
	}
	msg, ok := errorText(body)
	if !ok {
		t.Fatalf("body %q is not {\"error\": ...}", body)
	}
	if !strings.Contains(msg, contains) {
		t.Errorf("error %q does not contain %q", msg, contains)
	}
}

func TestRoot(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	resp, body := b.request(t, http.MethodGet, "/", nil)
	if resp.StatusCode != 200 || string(body) != "Ollama is running" {
		t.Fatalf("GET /: %d %q", resp.StatusCode, body)
	}
	resp, body = b.request(t, http.MethodHead, "/", nil)
	if resp.StatusCode != 200 || len(body) != 0 {
		t.Fatalf("HEAD /: %d %q", resp.StatusCode, body)
	}
	resp, body = b.request(t, http.MethodGet, "/no/such/route", nil)
	wantError(t, resp, body, http.StatusNotFound, "not found")
}

// Every pass-through route answers exactly what the target answers: status,
// Content-Type and body, byte for byte.
func TestPassThroughMatchesTarget(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	cases := []struct{ method, path, body string }{
		{"GET", "/api/version", ""},
		{"HEAD", "/api/version", ""},
		{"GET", "/api/tags", ""},
		{"HEAD", "/api/tags", ""},
		{"GET", "/api/ps", ""},
		{"GET", "/api/status", ""}, // the fake has no such route: its 404 is relayed as is
		{"GET", "/v1/models", ""},
		{"GET", "/v1/models/tiny-a:latest", ""},
		{"POST", "/api/show", `{"model":"tiny-a"}`},
		{"POST", "/api/show", `{"name":"tiny-embed:latest"}`},
		{"POST", "/api/embed", `{"model":"tiny-embed","input":["hello","world"]}`},
		{"POST", "/api/embed", `{"model":"tiny-embed","input":42}`}, // the target's 400
		{"POST", "/api/embeddings", `{"model":"tiny-embed","prompt":"hello"}`},
		{"POST", "/v1/embeddings", `{"model":"tiny-embed","input":"hello"}`},
		{"POST", "/api/copy", `{"source":"nope","destination":"x"}`},  // the target's 404
		{"DELETE", "/api/delete", `{"model":"nope"}`},                 // the target's 404
		{"POST", "/api/push", `{"model":"nope","stream":false}`},      // the target's 404
		{"HEAD", "/api/blobs/sha256:" + strings.Repeat("ab", 32), ""}, // the target's 404
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.path+" "+c.body, func(t *testing.T) {
			var body []byte
			if c.body != "" {
				body = []byte(c.body)
			}
			want, wantBody := direct(t, b.Fake, c.method, c.path, body)
			got, gotBody := b.request(t, c.method, c.path, body)
			if got.StatusCode != want.StatusCode {
				t.Errorf("status %d, target says %d (%s)", got.StatusCode, want.StatusCode, gotBody)
			}
			if g, w := got.Header.Get("Content-Type"), want.Header.Get("Content-Type"); g != w {
				t.Errorf("Content-Type %q, target says %q", g, w)
			}
			if !bytes.Equal(gotBody, wantBody) {
				t.Errorf("body\n got %s\nwant %s", gotBody, wantBody)
			}
		})
	}
}

// /api/ps is fetched live (the e2e test compares it with Ollama directly), updates the
// inventory, and falls back to the cached list while the target is down.
func TestPsLiveAndCached(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	b.Fake.SetLoaded("tiny-b")
	resp, body := b.request(t, http.MethodGet, "/api/ps", nil)
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"tiny-b:latest"`)) {
		t.Fatalf("live ps: %d %s", resp.StatusCode, body)
	}
	if got := b.Inv.Loaded(); len(got) != 1 || got[0] != "tiny-b:latest" {
		t.Errorf("inventory Loaded() = %v after a live ps, want [tiny-b:latest]", got)
	}
	b.Fake.SetDown(true)
	resp, cached := b.request(t, http.MethodGet, "/api/ps", nil)
	if resp.StatusCode != 200 || !bytes.Equal(cached, body) {
		t.Fatalf("ps with the target down: %d %s, want the cached %s", resp.StatusCode, cached, body)
	}
}

// /api/tags is served from a fresh inventory, and from the last known list while the
// target is down.
func TestTagsFreshAndCached(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	b.Fake.AddModel(ollamatest.Model{Name: "late:latest"})
	// The initial poll is older than tagsMaxAge once the deadline passes; poll until the
	// gateway's answer shows the new model.
	eventually(t, 10*time.Second, "/api/tags shows a model added to the target", func() bool {
		_, body := b.request(t, http.MethodGet, "/api/tags", nil)
		return bytes.Contains(body, []byte(`"late:latest"`))
	})
	b.Fake.SetDown(true)
	if err := b.Inv.Refresh(testCtx(t, 10*time.Second)); err == nil {
		t.Fatal("refresh against a down target succeeded")
	}
	resp, body := b.request(t, http.MethodGet, "/api/tags", nil)
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"late:latest"`)) {
		t.Fatalf("tags with the target down: %d %s", resp.StatusCode, body)
	}
}

// With no inventory at all and the target down, the metadata routes are 502s.
func TestTargetDownNeverPolled(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withoutInitialPoll())
	b.Fake.SetDown(true)
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/api/tags", ""},
		{"GET", "/api/ps", ""},
		{"GET", "/api/version", ""},
		{"GET", "/v1/models", ""},
		{"GET", "/v1/models/tiny-a", ""},
		// The inventory cannot say the model is unknown: the target's failure is the answer.
		{"POST", "/api/show", `{"model":"tiny-a"}`},
		{"POST", "/api/embed", `{"model":"tiny-embed","input":"x"}`},
		{"POST", "/api/embeddings", `{"model":"tiny-embed","prompt":"x"}`},
		{"POST", "/v1/embeddings", `{"model":"tiny-embed","input":"x"}`},
		{"POST", "/api/pull", `{"model":"tiny-a"}`},
	} {
		var body []byte
		if c.body != "" {
			body = []byte(c.body)
		}
		resp, out := b.request(t, c.method, c.path, body)
		t.Run(c.method+" "+c.path, func(t *testing.T) { wantError(t, resp, out, http.StatusBadGateway, "unreachable") })
	}
}

// A known model with the target gone mid-way is a 502, not a 404 or a hang.
func TestTargetDownAfterPoll(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	b.Fake.SetDown(true)
	resp, body := b.request(t, http.MethodPost, "/api/embed", []byte(`{"model":"tiny-embed","input":"x"}`))
	wantError(t, resp, body, http.StatusBadGateway, "ollama is unreachable")
}

// An unknown model triggers one re-poll: a model pulled since the last poll is found, a
// model the target really lacks is Ollama's 404 without a call to the target.
func TestUnknownModelRepollThen404(t *testing.T) {
	t.Parallel()
	routes := []struct{ method, path, body string }{
		{"POST", "/api/show", `{"model":%q}`},
		{"POST", "/api/embed", `{"model":%q,"input":"x"}`},
		{"POST", "/api/embeddings", `{"model":%q,"prompt":"x"}`},
		{"POST", "/v1/embeddings", `{"model":%q,"input":"x"}`},
		{"GET", "/v1/models/%s", ""},
	}
	for i, rt := range routes {
		t.Run(rt.path, func(t *testing.T) {
			t.Parallel()
			b := newTestBundle(t)
			name := fmt.Sprintf("late-embed-%d:latest", i)
			build := func(model string) (string, []byte) {
				if rt.body == "" {
					return fmt.Sprintf(rt.path, model), nil
				}
				return rt.path, fmt.Appendf(nil, rt.body, model)
			}
			b.Fake.AddModel(ollamatest.Model{Name: name, Embedding: true})
			if b.Inv.HasModel(name) {
				t.Fatal("the inventory already knows the model; the test proves nothing")
			}
			path, body := build(name)
			resp, out := b.request(t, rt.method, path, body)
			if resp.StatusCode != 200 {
				t.Fatalf("a model added after the last poll: %d %s, want 200 after a re-poll", resp.StatusCode, out)
			}

			before := len(b.Fake.Calls())
			path, body = build("ghost")
			resp, out = b.request(t, rt.method, path, body)
			wantError(t, resp, out, http.StatusNotFound, "")
			want := `model 'ghost' not found` // Ollama 0.17's wording, per route
			if strings.Contains(rt.path, "embed") {
				want = `model "ghost" not found, try pulling it first`
			}
			if got, _ := errorText(out); got != want {
				t.Errorf("error %q, want %q", got, want)
			}
			polled, asked := false, false
			for _, c := range b.Fake.Calls()[before:] {
				switch {
				case c.Path == "/api/tags":
					polled = true
				case c.Model == "ghost:latest" || strings.Contains(c.Path, "ghost"):
					asked = true
				}
			}
			if !polled {
				t.Error("no re-poll of /api/tags before the 404")
			}
			if asked {
				t.Error("the unknown model reached the target")
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) { c.MaxBodyBytes = 1024 }))
	paths := []string{"/api/show", "/api/embed", "/api/embeddings", "/v1/embeddings", "/api/pull", "/api/push", "/api/create", "/api/copy"}
	for _, p := range paths {
		t.Run(p, func(t *testing.T) {
			resp, body := b.request(t, http.MethodPost, p, []byte(`{"model":`))
			wantError(t, resp, body, http.StatusBadRequest, "invalid JSON")
			resp, body = b.request(t, http.MethodPost, p, []byte(`[1,2]`))
			wantError(t, resp, body, http.StatusBadRequest, "invalid JSON")
			resp, body = b.request(t, http.MethodPost, p, nil)
			wantError(t, resp, body, http.StatusBadRequest, "missing request body")
			big := fmt.Appendf(nil, `{"model":"tiny-embed","input":%q}`, strings.Repeat("x", 2048))
			resp, body = b.request(t, http.MethodPost, p, big)
			wantError(t, resp, body, http.StatusRequestEntityTooLarge, "too large")
		})
	}
	for _, p := range []string{"/api/show", "/api/embed", "/api/embeddings", "/v1/embeddings"} {
		resp, body := b.request(t, http.MethodPost, p, []byte(`{"input":"x"}`))
		wantError(t, resp, body, http.StatusBadRequest, "model is required")
	}
	resp, body := b.request(t, http.MethodDelete, "/api/delete", []byte(`nope`))
	wantError(t, resp, body, http.StatusBadRequest, "invalid JSON")
	for _, c := range b.Fake.Calls() {
		if c.Path != "/api/tags" && c.Path != "/api/ps" && c.Path != ollama.AliasesPath {
			t.Errorf("a bad request reached the target: %s %s", c.Method, c.Path)
		}
	}
}

// An error the target answers is relayed with its status and message.
func TestUpstreamErrorPassedThrough(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	b.Fake.FailNextOn("/api/embed", 1, ollamatest.FailStatus(http.StatusBadRequest, "input length exceeds the context length"))
	resp, body := b.request(t, http.MethodPost, "/api/embed", []byte(`{"model":"tiny-embed","input":"x"}`))
	if resp.StatusCode != 400 || string(body) != `{"error":"input length exceeds the context length"}` {
		t.Fatalf("got %d %s", resp.StatusCode, body)
	}
	b.Fake.FailNextOn("/api/show", 1, ollamatest.Fail500)
	resp, body = b.request(t, http.MethodPost, "/api/show", []byte(`{"model":"tiny-a"}`))
	if resp.StatusCode != 500 || string(body) != `{"error":"fake: injected failure"}` {
		t.Fatalf("got %d %s", resp.StatusCode, body)
	}
}

// Embeddings go to the target concurrently: N requests must all be inside the target
// call at once before any is let go. A gateway that serialized them would never get
// there and the test would fail at its deadline.
func TestEmbedsRunConcurrently(t *testing.T) {
	t.Parallel()
	const n = 4
	arrived := make(chan string, n)
	release := make(chan struct{})
	b := newTestBundle(t, withTarget(func(c ollama.Client) ollama.Client {
		return &hookClient{Client: c, do: func(ctx context.Context, method, path string, h http.Header, body io.Reader) (*http.Response, error) {
			if strings.Contains(path, "embed") {
				arrived <- path
				select {
				case <-release:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			return c.Do(ctx, method, path, h, body)
		}}
	}))
	paths := []string{"/api/embed", "/api/embeddings", "/v1/embeddings", "/api/embed"}
	bodies := []string{`{"model":"tiny-embed","input":"a"}`, `{"model":"tiny-embed","prompt":"b"}`, `{"model":"tiny-embed","input":"c"}`, `{"model":"tiny-embed","input":["d","e"]}`}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	ctx := testCtx(t, 30*time.Second)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, b.URL+paths[i], strings.NewReader(bodies[i]))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			out, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				errs <- fmt.Errorf("%s: %d %s", paths[i], resp.StatusCode, out)
			}
		}()
	}
	timeout := time.After(10 * time.Second)
	for i := range n {
		select {
		case <-arrived:
		case <-timeout:
			close(release)
			wg.Wait()
			t.Fatalf("only %d of %d embedding requests reached the target at once", i, n)
		}
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A pull's progress reaches the client line by line: the client reads each line before
// the fake is allowed to write the next. Afterwards the inventory knows the new model.
func TestPullStreamsChunkByChunk(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withFake(ollamatest.WithGatePull()))
	ctx := testCtx(t, 20*time.Second)
	step := func() {
		t.Helper()
		if err := b.Fake.PullStep(ctx); err != nil {
			t.Fatalf("pull step: %v", err)
		}
	}
	stepped := make(chan error, 1)
	go func() { stepped <- b.Fake.PullStep(ctx) }() // the fake sends headers with line 1
	resp := b.send(t, http.MethodPost, "/api/pull", []byte(`{"model":"fresh-model"}`))
	defer resp.Body.Close()
	if err := <-stepped; err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("Content-Type %q", ct)
	}
	br := bufio.NewReader(resp.Body)
	var statuses []string
	for i := 0; ; i++ {
		if i > 0 {
			step()
		}
		line, err := br.ReadBytes('\n')
		if err != nil {
			t.Fatalf("line %d: %v (%q)", i+1, err, line)
		}
		var p struct {
			Status string `json:"status"`
		}
		if err := json.Unmarshal(line, &p); err != nil {
			t.Fatalf("line %d %q: %v", i+1, line, err)
		}
		statuses = append(statuses, p.Status)
		if p.Status == "success" {
			break
		}
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Fatalf("after success: %q %v", rest, err)
	}
	if statuses[0] != "pulling manifest" || len(statuses) != 6 {
		t.Errorf("statuses %q", statuses)
	}
	if !b.Inv.HasModel("fresh-model") {
		t.Error("the inventory does not know the pulled model once the pull response ended")
	}
}

// Model management relays and refreshes the inventory after changes.
func TestModelManagement(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) { c.MaxBodyBytes = 1024 }))
	resp, body := b.request(t, http.MethodPost, "/api/copy", []byte(`{"source":"tiny-a","destination":"copy-a"}`))
	if resp.StatusCode != 200 || !b.Inv.HasModel("copy-a") {
		t.Fatalf("copy: %d %s, inventory has it: %v", resp.StatusCode, body, b.Inv.HasModel("copy-a"))
	}
	resp, body = b.request(t, http.MethodPost, "/api/create", []byte(`{"model":"made","from":"tiny-a","stream":false}`))
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"success"`)) || !b.Inv.HasModel("made") {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	resp, body = b.request(t, http.MethodPost, "/api/push", []byte(`{"model":"made"}`))
	if resp.StatusCode != 200 || bytes.Count(body, []byte("\n")) != 4 {
		t.Fatalf("push: %d %s", resp.StatusCode, body)
	}
	resp, body = b.request(t, http.MethodDelete, "/api/delete", []byte(`{"model":"copy-a"}`))
	if resp.StatusCode != 200 || b.Inv.HasModel("copy-a") {
		t.Fatalf("delete: %d %s, inventory still has it: %v", resp.StatusCode, body, b.Inv.HasModel("copy-a"))
	}
}

// A blob upload is streamed to the target as it arrives, with no body limit.
func TestBlobUploadStreams(t *testing.T) {
	t.Parallel()
	firstBytes := make(chan []byte, 1)
	b := newTestBundle(t,
		withGateway(func(c *Config) { c.MaxBodyBytes = 1024 }),
		withTarget(func(c ollama.Client) ollama.Client {
			return &hookClient{Client: c, do: func(ctx context.Context, method, path string, h http.Header, body io.Reader) (*http.Response, error) {
				if method == http.MethodPost && strings.HasPrefix(path, "/api/blobs/") {
					head := make([]byte, 5)
					if _, err := io.ReadFull(body, head); err != nil {
						return nil, err
					}
					firstBytes <- head
					body = io.MultiReader(bytes.NewReader(head), body)
				}
				return c.Do(ctx, method, path, h, body)
			}}
		}))
	digest := "sha256:" + strings.Repeat("0123456789abcdef", 4)
	resp, _ := b.request(t, http.MethodHead, "/api/blobs/"+digest, nil)
	if resp.StatusCode != 404 {
		t.Fatalf("HEAD before upload: %d", resp.StatusCode)
	}
	pr, pw := io.Pipe()
	req, _ := http.NewRequestWithContext(testCtx(t, 20*time.Second), http.MethodPost, b.URL+"/api/blobs/"+digest, pr)
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				err = fmt.Errorf("upload: status %d", resp.StatusCode)
			}
		}
		done <- err
	}()
	if _, err := pw.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case head := <-firstBytes:
		if string(head) != "hello" {
			t.Fatalf("target got %q first", head)
		}
	case <-time.After(10 * time.Second):
		pw.CloseWithError(errors.New("test timed out"))
		t.Fatal("the upload's first bytes did not reach the target before the body ended: buffered")
	}
	// Much more than MaxBodyBytes: blobs have no body limit.
	if _, err := pw.Write(bytes.Repeat([]byte("x"), 64<<10)); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	resp, _ = b.request(t, http.MethodHead, "/api/blobs/"+digest, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("HEAD after upload: %d", resp.StatusCode)
	}
}

// A relayed stream the target cuts mid-way must not reach the client as a complete one.
func TestRelayCutMidStream(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	b.Fake.FailNextOn("/api/pull", 1, ollamatest.DropMidStream)
	resp := b.send(t, http.MethodPost, "/api/pull", []byte(`{"model":"cut"}`))
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("a cut stream read as complete: %q", body)
	}
	if !bytes.HasPrefix(body, []byte(`{"status":"pulling manifest"}`+"\n")) {
		t.Errorf("the lines before the cut were not relayed: %q", body)
	}
}

// Errors foreman makes itself take the shape of the route family, as Ollama's do: OpenAI
// SDKs read error.message on /v1, Ollama clients read error as a string on /api.
func TestErrorShapePerRouteFamily(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	resp, out := b.request(t, http.MethodPost, "/api/embed", []byte(`{"model":"ghost","input":"x"}`))
	var native struct {
		Error string `json:"error"`
	}
	if resp.StatusCode != http.StatusNotFound || json.Unmarshal(out, &native) != nil || native.Error == "" {
		t.Fatalf("/api error: %d %s, want 404 {\"error\": \"...\"}", resp.StatusCode, out)
	}
	resp, out = b.request(t, http.MethodPost, "/v1/embeddings", []byte(`{"model":"ghost","input":"x"}`))
	var openai struct {
		Error struct {
			Message string `json:"message"`
			Type    string `json:"type"`
		} `json:"error"`
	}
	if resp.StatusCode != http.StatusNotFound || json.Unmarshal(out, &openai) != nil ||
		openai.Error.Message != native.Error || openai.Error.Type != "api_error" {
		t.Fatalf("/v1 error: %d %s, want 404 with error.message %q and type api_error", resp.StatusCode, out, native.Error)
	}
}

// A known path asked with another method is a 405 naming the allowed ones, as Ollama
// answers (in its router's plain text on its own paths, see TestRouterMissAsOllama); an
// unknown path stays a 404.
func TestWrongMethodIs405(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	for _, c := range []struct{ method, path, allow string }{
		{http.MethodGet, "/api/chat", "POST"},
		{http.MethodPut, "/api/tags", "GET, HEAD"},
		{http.MethodPost, "/jobs/01J00000000000000000000000", "GET, HEAD, DELETE"}, // GET routes answer HEAD too
	} {
		resp, _ := b.request(t, c.method, c.path, nil)
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s %s: %d, want 405", c.method, c.path, resp.StatusCode)
		}
		if got := resp.Header.Get("Allow"); got != c.allow {
			t.Errorf("%s %s: Allow %q, want %q", c.method, c.path, got, c.allow)
		}
	}
	resp, out := b.request(t, http.MethodPost, "/jobs/01J00000000000000000000000", nil)
	wantError(t, resp, out, http.StatusMethodNotAllowed, "method not allowed")
	resp, out = b.request(t, http.MethodGet, "/jobs-nothing-here", nil)
	wantError(t, resp, out, http.StatusNotFound, "404")
}

// foreman guards origins itself (ADR-0023): a page it allows reaches the target's routes
// without the page's Origin, Cookie or Referer, which Ollama would judge by its own
// OLLAMA_ORIGINS (403) or should never see. Hop-by-hop headers, and those the
// Connection header names, stay on the client's connection too.
func TestPassThroughDropsBrowserHeaders(t *testing.T) {
	t.Parallel()
	const origin = "https://app.example.com"
	b := newTestBundle(t, withGateway(func(c *Config) { c.Origins = []string{origin} }))
	for _, tc := range []struct{ method, path, body string }{
		{http.MethodPost, "/api/show", `{"model":"tiny-a"}`},
		{http.MethodPost, "/api/embed", `{"model":"tiny-embed","input":"x"}`},
		{http.MethodPost, "/api/embeddings", `{"model":"tiny-embed","prompt":"x"}`},
		{http.MethodPost, "/v1/embeddings", `{"model":"tiny-embed","input":"x"}`},
		{http.MethodGet, "/v1/models", ""},
		{http.MethodGet, "/api/version", ""},
		{http.MethodPost, "/api/pull", `{"model":"tiny-a","stream":false}`},
	} {
		var body []byte
		if tc.body != "" {
			body = []byte(tc.body)
		}
		resp, out := b.request(t, tc.method, tc.path, body,
			"Origin", origin, "Cookie", "session=secret", "Referer", origin+"/chat",
			"Proxy-Authorization", "Basic cHJveHk6c2VjcmV0", "Connection", "X-Hop-Secret", "X-Hop-Secret", "1")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s: %d %s", tc.method, tc.path, resp.StatusCode, out)
		}
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != origin {
			t.Errorf("%s %s: Access-Control-Allow-Origin %q, want foreman's %q", tc.method, tc.path, got, origin)
		}
		calls := b.Fake.Calls()
		i := slices.IndexFunc(calls, func(c ollamatest.Call) bool { return c.Path == tc.path })
		if i < 0 {
			t.Fatalf("%s %s never reached the target", tc.method, tc.path)
		}
		last := calls[i]
		for _, h := range []string{"Origin", "Cookie", "Referer", "Proxy-Authorization", "X-Hop-Secret"} {
			if v := last.Header.Get(h); v != "" {
				t.Errorf("%s %s: the target got %s: %q", tc.method, tc.path, h, v)
			}
		}
	}
}

// The target's CORS headers say what the target allows, not what foreman does: they never
// replace foreman's. Its Vary joins foreman's; its hop-by-hop headers, and those its
// Connection header names, stay on its connection, as does a cookie it sets (a session
// of foreman's with a proxy in front of the Mac, not the caller's).
func TestPassThroughKeepsForemanCORS(t *testing.T) {
	t.Parallel()
	const origin = "https://app.example.com"
	b := newTestBundle(t, withGateway(func(c *Config) { c.Origins = []string{origin} }),
		withTarget(func(c ollama.Client) ollama.Client {
			return &hookClient{Client: c, do: func(ctx context.Context, method, path string, header http.Header, body io.Reader) (*http.Response, error) {
				resp, err := c.Do(ctx, method, path, header, body)
				if err == nil {
					resp.Header.Set("Access-Control-Allow-Origin", "*")
					resp.Header.Set("Access-Control-Allow-Credentials", "true")
					resp.Header.Set("Access-Control-Expose-Headers", "X-Target-Secret")
					resp.Header.Set("Vary", "Accept-Encoding")
					resp.Header.Set("Connection", "X-Target-Hop")
					resp.Header.Set("X-Target-Hop", "1")
					resp.Header.Set("Keep-Alive", "timeout=5")
					resp.Header.Add("Set-Cookie", "proxy_session=s3cret; HttpOnly")
				}
				return resp, err
			}}
		}))
	resp, out := b.request(t, http.MethodGet, "/api/version", nil, "Origin", origin)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%d %s", resp.StatusCode, out)
	}
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != origin {
		t.Errorf("Access-Control-Allow-Origin %q, want foreman's %q", got, origin)
	}
	if got := resp.Header.Get("Access-Control-Allow-Credentials"); got != "" {
		t.Errorf("the target's Access-Control-Allow-Credentials %q reached the client", got)
	}
	if got := resp.Header.Get("Access-Control-Expose-Headers"); !strings.Contains(got, HeaderJobID) || strings.Contains(got, "X-Target-Secret") {
		t.Errorf("Access-Control-Expose-Headers %q, want foreman's", got)
	}
	if got := resp.Header.Values("Vary"); !slices.Contains(got, "Origin") || !slices.Contains(got, "Accept-Encoding") {
		t.Errorf("Vary %q, want foreman's Origin and the target's Accept-Encoding", got)
	}
	for _, h := range []string{"X-Target-Hop", "Keep-Alive"} {
		if got := resp.Header.Get(h); got != "" {
			t.Errorf("the target's hop-by-hop %s %q reached the client", h, got)
		}
	}
	if got := resp.Header.Values("Set-Cookie"); len(got) != 0 {
		t.Errorf("the target's cookie reached the client: %q", got)
	}
}

// A blob digest is Ollama's sha256:<64 hex> (or sha256-<64 hex>), else Ollama's 400 before
// anything reaches the target: an escaped "../" in it must never become a path on the target.
func TestBlobDigestRefused(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	hex64 := strings.Repeat("0123456789abcdef", 4)
	for _, digest := range []string{
		"..%2F..%2Fapi%2Fchat", "..%2F..%2Fapi%2Ftags", "sha256:" + hex64 + "%2F..%2F..%2Fapi%2Fchat",
		"sha256:0123", "sha256:" + hex64 + "0", "sha512:" + hex64, "sha256:" + strings.Repeat("g", 64), "%2e%2e",
	} {
		for _, method := range []string{http.MethodPost, http.MethodHead} {
			resp, out := b.request(t, method, "/api/blobs/"+digest, []byte("x"))
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("%s %s: %d %s", method, digest, resp.StatusCode, out)
			}
			if method == http.MethodPost {
				// Ollama's words exactly (manifest.ErrInvalidDigestFormat): clients show them.
				if msg, _ := errorText(out); msg != "invalid digest format" {
					t.Errorf("%s: error %q, want Ollama's \"invalid digest format\"", digest, msg)
				}
			}
		}
	}
	for _, c := range b.Fake.Calls() {
		if c.Path != "/api/tags" && c.Path != "/api/ps" && c.Path != ollama.AliasesPath { // the inventory's first poll
			t.Errorf("the target got %s %s", c.Method, c.RawPath)
		}
	}
	for _, digest := range []string{"sha256:" + hex64, "sha256-" + strings.ToUpper(hex64)} {
		resp, out := b.request(t, http.MethodPost, "/api/blobs/"+digest, []byte("x"))
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST %s: %d %s", digest, resp.StatusCode, out)
		}
	}
}

// A target that answers, but not as Ollama does (another server on its port), is a bad
// gateway with a message that says so, not an internal error.
func TestTargetAnswerNotOllama(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withoutInitialPoll())
	for _, path := range []string{"/api/tags", "/api/ps"} {
		b.Fake.FailNextOn(path, 1, ollamatest.NotOllama)
		resp, out := b.request(t, http.MethodGet, path, nil)
		wantError(t, resp, out, http.StatusBadGateway, "ollama: the target's answer could not be read: GET "+path+": not JSON")
	}
}
