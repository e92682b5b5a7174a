package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// submit --wait says when it cannot read its job (foreman restarting, or gone), once
// until the next state, and waits on: before, it said nothing while foreman was down.
func TestSubmitWaitSaysWhenItCannotReadTheJob(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	release := fake.Hold("tiny-a")
	t.Cleanup(release)
	a := testApp(t, fake.URL, nil)
	target, err := url.Parse("http://" + a.Addr())
	if err != nil {
		t.Fatal(err)
	}
	proxy := wholeBody(httputil.NewSingleHostReverseProxy(target))
	// The wait's first read of the job goes through; the two after it are cut (foreman
	// killed as it answered), and the job is let go once they were.
	var reads atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.Path, "/jobs/") || strings.Contains(r.URL.Path, "/artifacts/") {
			proxy.ServeHTTP(w, r)
			return
		}
		switch reads.Add(1) {
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

	r := runCLI(t, map[string]string{"FOREMAN_URL": srv.URL}, nil, nil, "submit", "-m", "tiny-a", "--wait", "through a restart")
	if want := reply("tiny-a:latest", "user: through a restart\n") + "\n"; r.code != 0 || r.stdout != want {
		t.Fatalf("submit --wait: exit %d, stdout %q, want %q (stderr %s)", r.code, r.stdout, want, r.stderr)
	}
	if n := strings.Count(r.stderr, "still waiting"); n != 1 || !strings.Contains(r.stderr, "was cut short") {
		t.Errorf("stderr %q: want the failed reads said once, as an answer cut short", r.stderr)
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
