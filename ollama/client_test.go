package ollama_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

func newClient(t *testing.T, url string) *ollama.HTTPClient {
	t.Helper()
	c, err := ollama.NewClient(ollama.ClientConfig{BaseURL: url})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// collect runs Stream and returns its frames.
func collect(t *testing.T, c ollama.Client, path, body string) ([][]byte, string, error) {
	t.Helper()
	var frames [][]byte
	ct, err := c.Stream(testCtx(t), path, []byte(body), func(f []byte) error {
		frames = append(frames, f)
		return nil
	})
	return frames, ct, err
}

// rawBody fetches the same request with Do, for a byte-exact comparison.
func rawBody(t *testing.T, c ollama.Client, path, body string) []byte {
	t.Helper()
	resp, err := c.Do(testCtx(t), http.MethodPost, path, http.Header{"Content-Type": {"application/json"}}, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNewClientValidates(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"", "127.0.0.1:11434", "ftp://host", "http://", "/api", "::bad"} {
		if _, err := ollama.NewClient(ollama.ClientConfig{BaseURL: u}); err == nil {
			t.Errorf("NewClient(%q) accepted", u)
		}
	}
	for _, u := range []string{"http://127.0.0.1:11434", "https://mac.local/", "http://host/prefix"} {
		if _, err := ollama.NewClient(ollama.ClientConfig{BaseURL: u}); err != nil {
			t.Errorf("NewClient(%q): %v", u, err)
		}
	}
}

func TestStreamNDJSONByteExact(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t, ollamatest.WithTokens(4))
	c := newClient(t, fake.URL)
	for _, path := range []string{"/api/chat", "/api/generate"} {
		body := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"prompt":"hi"}`
		frames, ct, err := collect(t, c, path, body)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if ct != "application/x-ndjson" {
			t.Errorf("%s: content type %q", path, ct)
		}
		if len(frames) != 5 {
			t.Fatalf("%s: %d frames, want 5 (4 tokens + done)", path, len(frames))
		}
		for i, f := range frames {
			if !bytes.HasSuffix(f, []byte("\n")) || bytes.Count(f, []byte("\n")) != 1 {
				t.Errorf("%s: frame %d is not one line: %q", path, i, f)
			}
		}
		if !bytes.Contains(frames[4], []byte(`"done":true,"done_reason":"stop"`)) {
			t.Errorf("%s: last frame %s", path, frames[4])
		}
		if got, want := bytes.Join(frames, nil), rawBody(t, c, path, body); !bytes.Equal(got, want) {
			t.Errorf("%s: frames differ from body:\n%s\nvs\n%s", path, got, want)
		}
	}
}

func TestStreamSSEByteExact(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t, ollamatest.WithTokens(3))
	c := newClient(t, fake.URL)
	body := `{"model":"tiny-b","messages":[{"role":"user","content":"hi"}],"stream":true}`
	frames, ct, err := collect(t, c, "/v1/chat/completions", body)
	if err != nil {
		t.Fatal(err)
	}
	if ct != "text/event-stream" {
		t.Errorf("content type %q", ct)
	}
	if len(frames) != 5 || string(frames[4]) != "data: [DONE]\n\n" {
		t.Fatalf("frames %q", frames)
	}
	for _, f := range frames {
		if !bytes.HasPrefix(f, []byte("data: ")) || !bytes.HasSuffix(f, []byte("\n\n")) {
			t.Errorf("frame %q is not one SSE event", f)
		}
	}
	if got, want := bytes.Join(frames, nil), rawBody(t, c, "/v1/chat/completions", body); !bytes.Equal(got, want) {
		t.Errorf("frames differ from body")
	}
}

func TestStreamSSEMultiLineEvents(t *testing.T) {
	t.Parallel()
	events := []string{
		"event: message\r\ndata: {\"a\":1}\r\n\r\n",
		": keep-alive comment\n\n",
		"id: 7\ndata: line one\ndata: line two\n\n",
		"data: [DONE]\n\n",
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		for _, e := range events {
			_, _ = io.WriteString(w, e)
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(srv.Close)
	frames, ct, err := collect(t, newClient(t, srv.URL), "/v1/chat/completions", `{}`)
	if err != nil {
		t.Fatal(err)
	}
	if ct != "text/event-stream; charset=utf-8" {
		t.Errorf("content type %q", ct)
	}
	if len(frames) != len(events) {
		t.Fatalf("got %d frames %q", len(frames), frames)
	}
	for i := range events {
		if string(frames[i]) != events[i] {
			t.Errorf("frame %d = %q, want %q", i, frames[i], events[i])
		}
	}
}

func TestStreamLargeLine(t *testing.T) {
	t.Parallel()
	big := append(append([]byte(`{"response":"`), bytes.Repeat([]byte("x"), 5<<20)...), "\"}\n"...)
	tail := []byte(`{"done":true}`) // no trailing newline: still delivered as sent
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = w.Write(big)
		_, _ = w.Write(tail)
	}))
	t.Cleanup(srv.Close)
	frames, _, err := collect(t, newClient(t, srv.URL), "/api/generate", `{}`)
	if err != nil {
		t.Fatal(err)
	}
	if len(frames) != 2 || !bytes.Equal(frames[0], big) || !bytes.Equal(frames[1], tail) {
		t.Fatalf("got %d frames (first %d bytes)", len(frames), len(frames[0]))
	}
}

// A non-streamed answer larger than MaxFrameSize is an error, not an answer cut short
// (which would go on as a truncated, invalid result); one of MaxFrameSize is whole.
func TestStreamNonStreamingTooLarge(t *testing.T) {
	t.Parallel()
	for _, n := range []int{ollama.MaxFrameSize, ollama.MaxFrameSize + 1} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(bytes.Repeat([]byte(" "), n))
		}))
		// Not testCtx: reading 64 MiB under -race on a loaded machine takes longer than
		// its 10 s, and the bound tested is one of size; a hang is go test's -timeout.
		var frames [][]byte
		_, err := newClient(t, srv.URL).Stream(t.Context(), "/api/embed", []byte(`{}`), func(f []byte) error {
			frames = append(frames, f)
			return nil
		})
		srv.Close()
		if n > ollama.MaxFrameSize {
			if !errors.Is(err, ollama.ErrFrameTooLarge) {
				t.Fatalf("answer of %d bytes: %v, want ErrFrameTooLarge", n, err)
			}
			continue
		}
		if err != nil || len(frames) != 1 || len(frames[0]) != n {
			t.Fatalf("answer of %d bytes: %d frames, %v", n, len(frames), err)
		}
	}
}

func TestStreamNonStreamingJSON(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	c := newClient(t, fake.URL)
	body := `{"model":"tiny-a","prompt":"hi","stream":false}`
	frames, ct, err := collect(t, c, "/api/generate", body)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ct, "application/json") || len(frames) != 1 {
		t.Fatalf("ct %q, %d frames", ct, len(frames))
	}
	if !bytes.Equal(frames[0], rawBody(t, c, "/api/generate", body)) {
		t.Error("frame differs from body")
	}
}

func TestStreamHTTPError(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	c := newClient(t, fake.URL)

	_, _, err := collect(t, c, "/api/chat", `{"model":"nope","messages":[{"role":"user","content":"x"}]}`)
	var he *ollama.HTTPError
	if !errors.As(err, &he) || he.StatusCode != 404 || he.Message != `model 'nope' not found` {
		t.Fatalf("err = %#v", err)
	}

	fake.FailNext(1, ollamatest.FailStatus(503, "server busy"))
	_, _, err = collect(t, c, "/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"x"}]}`)
	if !errors.As(err, &he) || he.StatusCode != 503 || he.Message != "server busy" {
		t.Fatalf("err = %v", err)
	}
	var ce *ollama.ConnectionError
	if errors.As(err, &ce) {
		t.Error("an HTTP error must not be a ConnectionError")
	}
}

func TestHTTPErrorPlainBody(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "  bad gateway from proxy  ", http.StatusBadGateway)
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL)
	_, _, err := c.Tags(testCtx(t))
	var he *ollama.HTTPError
	if !errors.As(err, &he) || he.StatusCode != 502 || he.Message != "bad gateway from proxy" {
		t.Fatalf("err = %v", err)
	}
}

// closedAddr is a loopback address nothing listens on: a call to it is refused.
func closedAddr(t *testing.T) string { return ollamatest.ClosedAddr(t) }

func TestConnectionRefused(t *testing.T) {
	t.Parallel()
	c := newClient(t, "http://"+closedAddr(t))
	ctx := testCtx(t)

	checks := map[string]error{}
	_, checks["Stream"] = c.Stream(ctx, "/api/chat", []byte(`{}`), func([]byte) error { return nil })
	_, _, checks["Tags"] = c.Tags(ctx)
	_, _, checks["Ps"] = c.Ps(ctx)
	_, checks["Version"] = c.Version(ctx)
	resp, doErr := c.Do(ctx, http.MethodGet, "/", nil, nil)
	if resp != nil {
		resp.Body.Close()
	}
	checks["Do"] = doErr
	for name, err := range checks {
		var ce *ollama.ConnectionError
		if !errors.As(err, &ce) {
			t.Errorf("%s: err = %v, want *ConnectionError", name, err)
			continue
		}
		var oe *net.OpError
		if !errors.As(err, &oe) {
			t.Errorf("%s: ConnectionError does not unwrap to the net error: %v", name, err)
		}
		if !ollama.NotSent(err) {
			t.Errorf("%s: a refused connection is not NotSent: %v", name, err)
		}
	}
}

// A request the target read before it dropped the connection, or answered with an error,
// was sent: only a connection never made is NotSent.
func TestNotSentIsOnlyAConnectionNeverMade(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	c := newClient(t, fake.URL)
	for name, f := range map[string]ollamatest.Failure{
		"dropped": ollamatest.DropConnection,
		"cut":     ollamatest.DropMidStream,
		"503":     ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy"),
	} {
		fake.FailNext(1, f)
		_, err := c.Stream(testCtx(t), "/api/chat", []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`), func([]byte) error { return nil })
		if err == nil || ollama.NotSent(err) {
			t.Errorf("%s: err = %v; want an error that is not NotSent", name, err)
		}
	}

	// A reset (RST) after the request was read: a *net.OpError too, of a read.
	reset := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		_ = conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
	}))
	t.Cleanup(reset.Close)
	_, err := newClient(t, reset.URL).Stream(testCtx(t), "/api/chat", []byte(`{}`), func([]byte) error { return nil })
	var oe *net.OpError
	if !errors.As(err, &oe) || ollama.NotSent(err) {
		t.Errorf("reset: err = %v; want a *net.OpError that is not NotSent", err)
	}
}

// TestResponseHeaderTimeout: a target that takes the request and never answers is given
// up after ClientConfig.ResponseHeaderTimeout with a *ConnectionError naming the wait,
// long before the caller's own deadline; with a negative one the transport sets no
// bound and only the caller's deadline ends the call.
func TestResponseHeaderTimeout(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		var held []net.Conn // read nothing, answer nothing, until the test ends
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	c, err := ollama.NewClient(ollama.ClientConfig{BaseURL: "http://" + ln.Addr().String(), ResponseHeaderTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = c.Tags(testCtx(t)) // a 10 s deadline
	var ce *ollama.ConnectionError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "timeout awaiting response headers") {
		t.Fatalf("Tags against a silent target: %v; want a *ConnectionError for the header wait", err)
	}

	unbounded, err := ollama.NewClient(ollama.ClientConfig{BaseURL: "http://" + ln.Addr().String(), ResponseHeaderTimeout: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, _, err := unbounded.Tags(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Tags without a header bound: %v; want the caller's deadline", err)
	}
}

func TestDroppedConnections(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t, ollamatest.WithTokens(5))
	c := newClient(t, fake.URL)
	body := `{"model":"tiny-a","messages":[{"role":"user","content":"x"}]}`

	fake.FailNext(1, ollamatest.DropMidStream)
	frames, _, err := collect(t, c, "/api/chat", body)
	var ce *ollama.ConnectionError
	if !errors.As(err, &ce) {
		t.Fatalf("mid-stream drop: err = %v", err)
	}
	if len(frames) != 2 {
		t.Errorf("mid-stream drop: %d frames before the drop, want 2", len(frames))
	}

	fake.FailNext(1, ollamatest.DropConnection)
	if _, _, err = collect(t, c, "/api/chat", body); !errors.As(err, &ce) {
		t.Fatalf("drop before headers: err = %v", err)
	}

	fake.FailNext(1, ollamatest.DropMidStream)
	if _, _, err = collect(t, c, "/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"x"}],"stream":false}`); !errors.As(err, &ce) {
		t.Fatalf("truncated JSON body: err = %v", err)
	}

	// The fake works again afterwards.
	if _, _, err = collect(t, c, "/api/chat", body); err != nil {
		t.Fatal(err)
	}
}

func TestStreamContextCancel(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	c := newClient(t, fake.URL)
	release := fake.Hold("tiny-a")
	t.Cleanup(release)

	ctx, cancel := context.WithCancel(testCtx(t))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Stream(ctx, "/api/chat", []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"x"}]}`), func([]byte) error { return nil })
		errc <- err
	}()
	if err := fake.WaitStarted(testCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	cancel()
	err := <-errc
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	var ce *ollama.ConnectionError
	if errors.As(err, &ce) {
		t.Fatal("cancellation must not be a ConnectionError")
	}
	err = fake.WaitFor(testCtx(t), func(calls []ollamatest.Call) bool {
		return len(calls) == 1 && calls[0].Finished && calls[0].Canceled
	})
	if err != nil {
		t.Fatalf("fake never saw the call canceled: %+v", fake.Calls())
	}
}

func TestStreamCallbackErrorAborts(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t, ollamatest.WithTokens(50))
	c := newClient(t, fake.URL)
	stop := errors.New("stop here")
	n := 0
	_, err := c.Stream(testCtx(t), "/api/generate", []byte(`{"model":"tiny-a","prompt":"x"}`), func([]byte) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 2 {
		t.Fatalf("err = %v after %d frames", err, n)
	}
}

func TestBearerToken(t *testing.T) {
	t.Parallel()
	got := make(chan string, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Method + " " + r.URL.Path + " " + r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"models":[],"version":"1"}`)
	}))
	t.Cleanup(srv.Close)
	c, err := ollama.NewClient(ollama.ClientConfig{BaseURL: srv.URL + "/", Token: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if _, _, err := c.Tags(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stream(ctx, "/api/chat", []byte(`{}`), func([]byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(ctx, http.MethodPost, "/api/show", http.Header{"Authorization": {"Bearer client-token"}}, strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, want := range []string{"GET /api/tags Bearer s3cret", "POST /api/chat Bearer s3cret", "POST /api/show Bearer s3cret"} {
		if g := <-got; g != want {
			t.Errorf("got %q, want %q", g, want)
		}
	}

	// Without a token, nothing is added.
	c2 := newClient(t, srv.URL)
	if _, err := c2.Version(ctx); err != nil {
		t.Fatal(err)
	}
	if g := <-got; g != "GET /api/version " {
		t.Errorf("got %q", g)
	}
}

func TestMetadata(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	fake.SetLoaded("tiny-b")
	c := newClient(t, fake.URL)
	ctx := testCtx(t)
	tags, raw, err := c.Tags(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(tags.Models) != 3 || tags.Models[0].Name != "tiny-a:latest" || !bytes.Contains(raw, []byte(`"tiny-embed:latest"`)) {
		t.Errorf("tags %+v", tags)
	}
	ps, _, err := c.Ps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps.Models) != 1 || ps.Models[0].Name != "tiny-b:latest" {
		t.Errorf("ps %+v", ps)
	}
	v, err := c.Version(ctx)
	if err != nil || v.Version != "0.17.0" {
		t.Errorf("version %+v %v", v, err)
	}
}

// An escaped slash in a path segment stays escaped on the target: decoded, "..%2F" would
// become a real "../" that a proxy in front of the target may resolve.
func TestDoKeepsEscapes(t *testing.T) {
	t.Parallel()
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Method + " " + r.RequestURI
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL+"/base")
	resp, err := c.Do(testCtx(t), http.MethodPost, "/api/blobs/..%2F..%2Fapi%2Fchat?x=%2F", nil, strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if g, want := <-got, "POST /base/api/blobs/..%2F..%2Fapi%2Fchat?x=%2F"; g != want {
		t.Errorf("the target got %q, want %q", g, want)
	}
}

// A redirect from the target is the target's answer, relayed as it is: following it
// would send a request the client never made (a HEAD on a blob became GET /api/tags).
func TestDoDoesNotFollowRedirects(t *testing.T) {
	t.Parallel()
	got := make(chan string, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Method + " " + r.URL.Path
		if r.URL.Path != "/api/tags" {
			http.Redirect(w, r, "/api/tags", http.StatusMovedPermanently)
		}
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL)
	resp, err := c.Do(testCtx(t), http.MethodHead, "/api/blobs/x", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/api/tags" {
		t.Errorf("got %d Location %q, want the target's 301", resp.StatusCode, resp.Header.Get("Location"))
	}
	if g := <-got; g != "HEAD /api/blobs/x" {
		t.Errorf("the target got %q", g)
	}
	select {
	case g := <-got:
		t.Errorf("the redirect was followed: %q", g)
	default:
	}
}

// An answer that is not Ollama's (an HTML page, a redirect) is ErrBadAnswer, apart from
// the target being unreachable or refusing.
func TestMetadataBadAnswer(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/version" {
			http.Redirect(w, r, "/login", http.StatusFound)
			return
		}
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, "<html></html>")
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL)
	ctx := testCtx(t)
	_, _, err := c.Tags(ctx)
	if !errors.Is(err, ollama.ErrBadAnswer) || !strings.Contains(err.Error(), "GET /api/tags") {
		t.Errorf("Tags: %v", err)
	}
	_, _, err = c.Ps(ctx)
	if !errors.Is(err, ollama.ErrBadAnswer) {
		t.Errorf("Ps: %v", err)
	}
	_, err = c.Version(ctx)
	if !errors.Is(err, ollama.ErrBadAnswer) || !strings.Contains(err.Error(), "302") {
		t.Errorf("Version: %v", err)
	}
}

// Do sends a query as given, a "#" in it included, and refuses, without a call, a path
// no request line may hold: ErrBadPath, the caller's fault.
func TestDoQueryAsGiven(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	c := newClient(t, fake.URL)
	ctx := testCtx(t)
	resp, err := c.Do(ctx, http.MethodGet, "/api/version?a#%zz&b", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	calls := fake.Calls()
	if len(calls) != 1 || calls[0].Path != "/api/version" || calls[0].RawQuery != "a#%zz&b" {
		t.Fatalf("the target got %+v", calls)
	}
	for _, path := range []string{"/api/%zz", "/api/version#top", "/api/version?a b", "/api/version?a\x01"} {
		resp, err := c.Do(ctx, http.MethodGet, path, nil, nil)
		if resp != nil {
			resp.Body.Close()
		}
		if !errors.Is(err, ollama.ErrBadPath) {
			t.Errorf("%q: err = %v, want ErrBadPath", path, err)
		}
	}
	if n := len(fake.Calls()); n != 1 {
		t.Errorf("%d calls, want 1: a bad path reaches no target", n)
	}
}

// OnResponse is told the Content-Type of a 2xx answer once, before its first frame; an
// error from it ends the call with that error and no frame. An error status is no
// answer to tell.
func TestStreamOnResponse(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		if r.URL.Path == "/api/missing" {
			w.WriteHeader(http.StatusNotFound)
		}
		_, _ = io.WriteString(w, "{\"n\":1}\n{\"n\":2}\n")
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL)
	stop := errors.New("relay gone")
	for _, tc := range []struct {
		path   string
		answer error
	}{{"/api/chat", nil}, {"/api/chat", stop}, {"/api/missing", nil}} {
		var told []string
		frames := 0
		_, err := c.Stream(testCtx(t), tc.path, []byte(`{}`), func([]byte) error {
			if len(told) != 1 {
				t.Errorf("a frame with OnResponse told %d times", len(told))
			}
			frames++
			return nil
		}, ollama.OnResponse(func(ct string) error {
			told = append(told, ct)
			return tc.answer
		}))
		switch {
		case tc.path == "/api/missing":
			var he *ollama.HTTPError
			if !errors.As(err, &he) || len(told) != 0 || frames != 0 {
				t.Errorf("status 404: %v, told %v, %d frames; want the HTTPError alone", err, told, frames)
			}
		case tc.answer != nil:
			if !errors.Is(err, stop) || frames != 0 {
				t.Errorf("OnResponse failing: %v, %d frames; want its error and no frame", err, frames)
			}
		default:
			if err != nil || frames != 2 || !slices.Equal(told, []string{"application/x-ndjson"}) {
				t.Errorf("OnResponse told %v: %v, %d frames", told, err, frames)
			}
		}
	}
}

// The frame callback's error ends the call with it, on the last frame too: one the
// target ended the body in without its line end.
func TestStreamCallbackErrorOnTheLastFrame(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = io.WriteString(w, "{\"n\":1}\n{\"done\":true}")
	}))
	t.Cleanup(srv.Close)
	stop := errors.New("frame refused")
	for _, refuse := range []string{`{"n":1}`, `{"done":true}`} {
		_, err := newClient(t, srv.URL).Stream(testCtx(t), "/api/chat", []byte(`{}`), func(f []byte) error {
			if strings.TrimSpace(string(f)) == refuse {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) {
			t.Errorf("callback refusing %s: %v, want its error", refuse, err)
		}
	}
}

// A failed call's error names its route without the query, which may hold a key, as
// its URL hides the query.
func TestConnectionErrorHidesTheQuery(t *testing.T) {
	t.Parallel()
	c := newClient(t, "http://"+closedAddr(t))
	resp, err := c.Do(testCtx(t), http.MethodGet, "/api/version?key=s3cret", nil, nil)
	if resp != nil {
		resp.Body.Close()
	}
	var ce *ollama.ConnectionError
	if !errors.As(err, &ce) {
		t.Fatalf("Do against a closed port: %v; want a *ConnectionError", err)
	}
	if strings.Contains(err.Error(), "s3cret") || ce.Op != "GET /api/version" {
		t.Fatalf("Do against a closed port: %v (op %q); want the route without its query", err, ce.Op)
	}
}
