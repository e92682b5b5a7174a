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
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// crLines is an answer body whose LFs a proxy turned into CRs: an SSE stream whose lines
// end with CR, as the event stream rules allow.
type crLines struct{ io.ReadCloser }

func (b crLines) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	for i, c := range p[:n] {
		if c == '\n' {
			p[i] = '\r'
		}
	}
	return n, err
}

// sseProxy is a proxy in front of the target at target that passes the bodies of its SSE answers
// through wrap, and returns its URL.
func sseProxy(t *testing.T, target string, wrap func(io.ReadCloser) io.ReadCloser) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.FlushInterval = -1
	proxy.ModifyResponse = func(resp *http.Response) error {
		if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
			resp.Body = wrap(resp.Body)
		}
		return nil
	}
	// The request body read whole first, as newAnswerRecorder does and for its reason: a
	// request body the server closed as the answer began cut the answer off.
	front := httptest.NewServer(wholeBody(proxy))
	t.Cleanup(front.Close)
	return front.URL
}

// trailed is an answer body that a proxy ends with trailer.
type trailed struct {
	io.ReadCloser
	trailer []byte
}

func (b *trailed) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != io.EOF || len(b.trailer) == 0 {
		return n, err
	}
	if n == 0 {
		n = copy(p, b.trailer)
		b.trailer = b.trailer[n:]
	}
	return n, nil // the trailer, or what is left of it, comes next
}

// A keep-alive comment a proxy sends after the target's stream ended leaves the answer
// whole, as a client reads it: the streamed caller gets it all without an error event,
// the non-streamed one the assembled answer (they got "the target's stream ended
// before its answer was complete" while the stream's last frame was taken for its end).
func TestSSEEndPastAKeepAlive(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t, ollamatest.WithTokens(3))
	const keepAlive = ": keep-alive\n\n"
	front := sseProxy(t, fake.URL, func(body io.ReadCloser) io.ReadCloser { return &trailed{body, []byte(keepAlive)} })
	b := newQueuedBundle(t, nil, withTargetURL(front))
	resp, body := b.request(t, http.MethodPost, "/v1/chat/completions", []byte(`{"model":"tiny-a","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if resp.StatusCode != http.StatusOK || !strings.HasSuffix(string(body), "data: [DONE]\n\n"+keepAlive) {
		t.Errorf("streamed: %d %q; want the stream as the target's proxy ended it", resp.StatusCode, body)
	}
	resp, body = b.request(t, http.MethodPost, "/v1/chat/completions", []byte(`{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"hi"}]}`))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"object":"chat.completion"`) {
		t.Errorf("not streamed: %d %q; want the assembled answer", resp.StatusCode, body)
	}
}

// A target whose SSE events end with "\r\r" (a proxy in front of Ollama) has its answer
// relayed event by event, as a client reads it: the first event reaches the caller while
// the target still waits to send the rest, and the whole answer ends as the target
// ended it. (Cut only at LF, the stream was one frame, held back until its end.)
func TestStreamedSSEOfCREventsRelayedAsItComes(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	fake := ollamatest.New(t, ollamatest.WithTokens(3), ollamatest.WithBeforeToken(func(ctx context.Context, i int) error {
		if i == 1 {
			select {
			case <-gate:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}))
	front := sseProxy(t, fake.URL, func(body io.ReadCloser) io.ReadCloser { return crLines{body} })
	b := newQueuedBundle(t, nil, withTargetURL(front))

	// The caller's request and its first event, read apart from the test's goroutine: the
	// answer's status goes out with its first frame.
	ctx := testCtx(t, 30*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"tiny-a","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	type firstEvent struct {
		resp *http.Response
		rd   *bufio.Reader
		ev   string
		err  error
	}
	first := make(chan firstEvent, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			first <- firstEvent{err: err}
			return
		}
		rd := bufio.NewReader(resp.Body)
		var ev []byte
		for !bytes.HasSuffix(ev, []byte("\r\r")) {
			c, err := rd.ReadByte()
			if err != nil {
				break
			}
			ev = append(ev, c)
		}
		first <- firstEvent{resp: resp, rd: rd, ev: string(ev)}
	}()
	var got firstEvent
	select {
	case got = <-first:
	case <-time.After(10 * time.Second):
		close(gate)
		t.Fatal("the first event did not reach the caller while the target held the rest")
	}
	if got.err != nil {
		close(gate)
		t.Fatal(got.err)
	}
	defer got.resp.Body.Close()
	if got.resp.StatusCode != http.StatusOK || !strings.HasPrefix(got.ev, "data: {") || !strings.HasSuffix(got.ev, "\r\r") {
		close(gate)
		t.Fatalf("status %d, first event %q", got.resp.StatusCode, got.ev)
	}
	rd := got.rd
	close(gate)
	rest, err := io.ReadAll(rd)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(rest), "data: [DONE]\r\r") || strings.Contains(string(rest), "\n") {
		t.Fatalf("the rest of the answer %q does not end as the target ended it", rest)
	}
}
