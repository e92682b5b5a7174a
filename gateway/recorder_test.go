package gateway

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
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
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rec := &answerRecorder{got: map[string][]recordedAnswer{}}
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.FlushInterval = -1 // a streamed answer goes on as it comes
	proxy.ModifyResponse = func(resp *http.Response) error {
		resp.Body = &recordedBody{ReadCloser: resp.Body, rec: rec, path: resp.Request.URL.Path, ctype: resp.Header.Get("Content-Type")}
		return nil
	}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	rec.URL = srv.URL
	return rec
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
