package client_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// cutServer answers every route with a beginning, then breaks the connection: foreman
// killed mid-answer. A stream sends a chunk first (generate's then half of the next); a
// JSON answer declares more bytes than it sends.
func cutServer(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		switch r.URL.Path {
		case "/api/chat":
			w.Header().Set("Content-Type", "application/x-ndjson")
			_, _ = io.WriteString(w, `{"model":"m","message":{"role":"assistant","content":"half"},"done":false}`+"\n")
			w.(http.Flusher).Flush()
		case "/api/generate":
			w.Header().Set("Content-Type", "application/x-ndjson")
			_, _ = io.WriteString(w, `{"model":"m","response":"half","done":false}`+"\n"+`{"model":"m","respon`)
			w.(http.Flusher).Flush()
		default:
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `{"id":"01J`)
			w.(http.Flusher).Flush()
		}
		panic(http.ErrAbortHandler)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// An answer whose connection breaks after it began is a *CutShortError matching
// ErrCutShort, not a *ConnectionError: the request reached foreman, and a caller that
// retries ErrUnreachable must not take it for one that never did.
func TestAnswerCutShortIsNotUnreachable(t *testing.T) {
	t.Parallel()
	c := newClient(t, cutServer(t))
	ctx := testCtx(t)
	var got []string
	_, chatErr := c.Chat(ctx, client.ChatRequest{Model: "m", Messages: []client.Message{{Role: "user", Content: "hi"}}},
		func(r *client.ChatResponse) error { got = append(got, r.Message.Content); return nil })
	if strings.Join(got, "") != "half" {
		t.Errorf("chunks before the cut: %q, want \"half\"", got)
	}
	// Cut in the middle of a line: the line is not a chunk that fails to decode.
	_, generateErr := c.Generate(ctx, client.GenerateRequest{Model: "m"}, nil)
	_, submitErr := c.SubmitAsync(ctx, client.SubmitRequest{Chat: &client.ChatRequest{Model: "m",
		Messages: []client.Message{{Role: "user", Content: "hi"}}}})
	_, jobErr := c.Job(ctx, "01JAAAAAAAAAAAAAAAAAAAAAAA")
	for name, err := range map[string]error{"Chat": chatErr, "Generate": generateErr, "SubmitAsync": submitErr, "Job": jobErr} {
		var cut *client.CutShortError
		if !errors.As(err, &cut) || !errors.Is(err, client.ErrCutShort) || errors.Is(err, client.ErrUnreachable) {
			t.Errorf("%s cut mid-answer: %v (%T), want a *CutShortError matching ErrCutShort and not ErrUnreachable", name, err, err)
			continue
		}
		if !strings.Contains(err.Error(), "cut short") {
			t.Errorf("%s: %q, want it to say the answer was cut short", name, err)
		}
	}
}

// A request foreman had whole and never answered (killed as it came) is cut short too;
// one that never reached it (nothing listens) is unreachable.
func TestRequestUnansweredIsCutShort(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	t.Cleanup(srv.Close)
	ctx := testCtx(t)
	_, err := newClient(t, srv.URL).SubmitAsync(ctx, client.SubmitRequest{Chat: &client.ChatRequest{Model: "m",
		Messages: []client.Message{{Role: "user", Content: "hi"}}}})
	var cut *client.CutShortError
	if !errors.As(err, &cut) || errors.Is(err, client.ErrUnreachable) {
		t.Errorf("SubmitAsync that foreman took and never answered: %v (%T), want a *CutShortError", err, err)
	}

	gone := httptest.NewServer(http.NotFoundHandler())
	addr := gone.URL
	gone.Close()
	_, err = newClient(t, addr).SubmitAsync(ctx, client.SubmitRequest{Chat: &client.ChatRequest{Model: "m",
		Messages: []client.Message{{Role: "user", Content: "hi"}}}})
	if !errors.Is(err, client.ErrUnreachable) || errors.Is(err, client.ErrCutShort) {
		t.Errorf("SubmitAsync to nothing listening: %v (%T), want a *ConnectionError", err, err)
	}
}

// A poll whose answer is cut short (foreman restarting) is polled again, as one that
// could not reach foreman: a wait does not end on it, and OnWaitError hears of it.
func TestWaitPollsAgainAfterAnAnswerCutShort(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	target, err := url.Parse(f.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := wholeBody(httputil.NewSingleHostReverseProxy(target))
	// The first read of the job (the wait's start) goes through; the two polls after it
	// are cut, and the job is let go once they were.
	release := f.Fake.Hold("tiny-a")
	t.Cleanup(release)
	var polls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.Path, "/jobs/") {
			proxy.ServeHTTP(w, r)
			return
		}
		switch polls.Add(1) {
		case 2:
		case 3:
			release()
		default:
			proxy.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "100")
		_, _ = io.WriteString(w, `{"id":`)
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, client.WithPollingOnly(), client.WithPollInterval(20*time.Millisecond))
	var waitErrs []error
	res, err := c.Submit(testCtx(t), client.SubmitRequest{
		Chat:        &client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}},
		OnWaitError: func(err error) { waitErrs = append(waitErrs, err) },
	})
	if err != nil {
		t.Fatalf("Submit past two polls cut short: %v", err)
	}
	if res.Job == nil || res.Job.State != client.StateDone || polls.Load() < 4 {
		t.Errorf("Submit = %+v after %d reads, want the job done after the cut ones", res, polls.Load())
	}
	// The caller hears of each failed read (the CLI says it still waits).
	if len(waitErrs) != 2 || !errors.Is(waitErrs[0], client.ErrCutShort) || !errors.Is(waitErrs[1], client.ErrCutShort) {
		t.Errorf("OnWaitError got %v, want the two reads cut short", waitErrs)
	}
}

// closingServer answers every request with body as an HTTP/1.1 answer whose end is the
// connection's close (no Content-Length, not chunked), then closes it cleanly.
func closingServer(t *testing.T, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n" + body)
		_ = buf.Flush()
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// An answer delimited by the connection's close ends cleanly wherever it was cut: a last
// line that is not whole JSON is the answer cut short, not a chunk that fails to decode,
// while a whole last line without its newline (a stream:false answer) is read.
func TestAnswerClosedInsideALineIsCutShort(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	req := client.ChatRequest{Model: "m", Messages: []client.Message{{Role: "user", Content: "hi"}}}

	cut := closingServer(t, `{"model":"m","message":{"role":"assistant","content":"half"},"done":false}`+"\n"+`{"model":"m","mess`)
	var got []string
	_, err := newClient(t, cut).Chat(ctx, req, func(r *client.ChatResponse) error { got = append(got, r.Message.Content); return nil })
	var cutErr *client.CutShortError
	if !errors.As(err, &cutErr) || !errors.Is(err, client.ErrCutShort) {
		t.Errorf("Chat closed inside a line: %v (%T), want a *CutShortError", err, err)
	}
	if strings.Join(got, "") != "half" {
		t.Errorf("chunks before the cut: %q, want \"half\"", got)
	}

	for _, end := range []string{"", " ", "\n ", "\r\n\r", "\n\t"} {
		whole := closingServer(t, `{"model":"m","message":{"role":"assistant","content":"all"},"done":true}`+end)
		res, err := newClient(t, whole).Chat(ctx, req, nil)
		if err != nil || res.Message.Content != "all" || !res.Done {
			t.Errorf("Chat of a whole last line ending %q = %+v, %v; want its content, done", end, res, err)
		}
	}

	// What is no chunk at all (a page some other server answered) is no answer cut short.
	_, err = newClient(t, closingServer(t, "Ollama is running")).Chat(ctx, req, nil)
	if err == nil || errors.Is(err, client.ErrCutShort) {
		t.Errorf("Chat answered a plain text: %v, want an error that is not ErrCutShort", err)
	}
}

// wholeBody hands h each request with its body read whole first: net/http's server
// closes a request body as its response's header goes out, and a reverse proxy's
// transport reads the body once past its end after sending it, a read a busy machine
// can delay until the answer began; on the closed body that read fails and the
// transport drops its connection, the answer cut. A body in memory is the transport's
// alone.
func wholeBody(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "read the request body: "+err.Error(), http.StatusBadRequest)
			return
		}
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		h.ServeHTTP(w, r)
	})
}
