package gateway

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// answerRecorder is a reverse proxy in front of a target that keeps every answer it
// relayed, by path: what the target sent, byte for byte.
type answerRecorder struct {
	URL string
	mu  sync.Mutex
	got map[string][]recordedAnswer
}

// recordedAnswer is one answer the target sent: its Content-Type and body.
type recordedAnswer struct {
	ctype string
	body  []byte
}

// recordAnswers puts an answerRecorder in front of the target at target.
func recordAnswers(t *testing.T, target string) *answerRecorder {
	t.Helper()
	return newAnswerRecorder(t, target, nil)
}

// newAnswerRecorder is recordAnswers whose proxy hands lateEnd, if not nil, the read
// its transport makes past the end of a request body it relays (net/http's check that
// the body is no longer than declared), to run when lateEnd chooses: a test runs it late,
// as a busy machine's scheduler can.
func newAnswerRecorder(t *testing.T, target string, lateEnd func(end func())) *answerRecorder {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rec := &answerRecorder{got: map[string][]recordedAnswer{}}
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.FlushInterval = -1 // a streamed answer goes on as it comes
	if lateEnd != nil {
		direct := proxy.Director
		proxy.Director = func(r *http.Request) {
			direct(r)
			if r.Body != nil {
				r.Body = &endsLate{ReadCloser: r.Body, left: r.ContentLength, late: lateEnd}
			}
		}
	}
	proxy.ModifyResponse = func(resp *http.Response) error {
		resp.Body = &recordedBody{ReadCloser: resp.Body, rec: rec, path: resp.Request.URL.Path, ctype: resp.Header.Get("Content-Type")}
		return nil
	}
	// The request body is read whole before it is passed on: net/http's server closes a
	// request body as its response's header goes out, and the transport reads the body
	// past its end after sending it, a read a busy machine can delay until the answer
	// began; on the closed body that read fails and the transport drops its connection to
	// the target, the answer half relayed. A body in memory is the transport's alone.
	srv := httptest.NewServer(wholeBody(proxy))
	t.Cleanup(srv.Close)
	rec.URL = srv.URL
	return rec
}

// wholeBody is h with each request's body read whole before h sees it: a proxy's
// transport then relays a body of its own (see newAnswerRecorder).
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

// endsLate is a request body whose read past its declared length is handed to late.
type endsLate struct {
	io.ReadCloser
	left int64
	late func(end func())
	ran  bool
}

func (b *endsLate) Read(p []byte) (n int, err error) {
	if b.left > 0 || b.ran {
		n, err = b.ReadCloser.Read(p)
		b.left -= int64(n)
		return n, err
	}
	b.ran = true
	b.late(func() { n, err = b.ReadCloser.Read(p) })
	return n, err
}

// answers are the answers the target sent on path so far, whole, in the order they ended.
func (r *answerRecorder) answers(path string) []recordedAnswer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got[path]
}

// recordedBody keeps what is read of an answer, and hands it to its recorder once the
// target ended it.
type recordedBody struct {
	io.ReadCloser
	rec   *answerRecorder
	path  string
	ctype string
	buf   bytes.Buffer
	once  sync.Once
}

func (b *recordedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.buf.Write(p[:n])
	if err == io.EOF {
		b.once.Do(func() {
			b.rec.mu.Lock()
			defer b.rec.mu.Unlock()
			b.rec.got[b.path] = append(b.rec.got[b.path], recordedAnswer{b.ctype, bytes.Clone(b.buf.Bytes())})
		})
	}
	return n, err
}

// The recorder relays a streamed answer whole when its transport reads the end of the
// request body only after the answer began, as a busy machine can have it: the proxy's
// server has by then closed that body (net/http drains and closes a request body as the
// response's header goes out), the transport's late read of it fails, and the transport
// closed its connection to the target with the answer half relayed. Before, the answer
// broke off there (unexpected EOF, and the proxy logged "read error during body copy: use
// of closed network connection"), as it did once in CI under the cross-node tests.
func TestRecorderRelaysAnAnswerBegunBeforeItsRequestEnded(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, time.Minute)
	begun, ended := make(chan struct{}), make(chan struct{})
	// The target holds token 3 until the proxy's transport has read the end of the request.
	fake := ollamatest.New(t, ollamatest.WithTokens(6), ollamatest.WithBeforeToken(func(ctx context.Context, i int) error {
		if i != 3 {
			return nil
		}
		select {
		case <-ended:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}))
	sent := newAnswerRecorder(t, fake.URL, func(end func()) {
		select {
		case <-begun:
		case <-ctx.Done():
		}
		end()
		close(ended)
	})

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, sent.URL+"/api/chat", bytes.NewReader(chatBody("tiny-a", "tell me", "true")))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	lines := bufio.NewReader(resp.Body)
	var answer bytes.Buffer
	for range 3 {
		line, err := lines.ReadBytes('\n')
		if err != nil {
			t.Fatalf("the first frames: %v (%q)", err, answer.Bytes())
		}
		answer.Write(line)
	}
	close(begun) // the answer began: the proxy's server wrote its header
	rest, err := io.ReadAll(lines)
	answer.Write(rest)
	if err != nil {
		t.Fatalf("the rest of the answer: %v (got %q)", err, answer.Bytes())
	}
	eventually(t, 10*time.Second, "the recorded answer", func() bool { return len(sent.answers("/api/chat")) == 1 })
	if want := sent.answers("/api/chat")[0].body; !bytes.Equal(answer.Bytes(), want) {
		t.Fatalf("answer:\n%s\nwant the target's %d bytes:\n%s", answer.Bytes(), len(want), want)
	}
	if n := bytes.Count(answer.Bytes(), []byte("\n")); n != 7 {
		t.Fatalf("answer of %d lines, want 6 tokens and the final line:\n%s", n, answer.Bytes())
	}
}
