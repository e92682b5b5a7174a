package client_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

const stoppedJob = "01HZX3K4M5N6P7Q8R9S0T1V2W3"

// stopping is a foreman that answers the first read of stoppedJob (queued) or of its
// health, and the early job id of a chat that asks for it, then stops answering
// (SIGSTOP, its store hung): every request after is taken and held until the client
// gives up on it. When answering is set, it goes on answering the reads, and a chat's
// answer comes once three were answered.
func stopping(t *testing.T, answering bool) (srv *httptest.Server, askedEarly *atomic.Bool) {
	t.Helper()
	askedEarly = new(atomic.Bool)
	var reads atomic.Int32
	answered := make(chan struct{})
	read := func(w http.ResponseWriter, r *http.Request, body string) {
		n := reads.Add(1)
		if n > 1 && !answering {
			<-r.Context().Done()
			return
		}
		if body != "" {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, body)
		}
		if n == 3 {
			close(answered)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		read(w, r, `{"id":"`+stoppedJob+`","kind":"chat","model":"tiny-a","state":"queued","attempts":0,"created_at":"2025-01-02T03:04:00Z","error":"","result":null,"artifacts":[]}`)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { read(w, r, "") })
	mux.HandleFunc("POST /api/chat", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body) // else net/http does not see the client leave
		w.Header().Set("X-Foreman-Job-Id", stoppedJob)
		if r.Header.Get("X-Foreman-Early-Job-Id") != "" {
			askedEarly.Store(true)
			w.WriteHeader(http.StatusEarlyHints)
		}
		answerLate(w, r, answered)
	})
	srv = httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, askedEarly
}

// WithAnswerTimeout bounds each request of a wait, never the wait: Wait and Chat end
// with a *NoAnswerError (errors.Is ErrNoAnswer and context.DeadlineExceeded) naming the
// job once foreman takes a request and answers nothing within it.
func TestAnswerTimeoutEndsAWaitOnAStoppedForeman(t *testing.T) {
	t.Parallel()
	chat := func(ctx context.Context, c *client.Client) error {
		_, err := c.Chat(ctx, client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}}, nil)
		return err
	}
	for _, tc := range []struct {
		name string
		call func(context.Context, *client.Client) error
		opts []client.Option
		// job and req: what the error names (a chat that did not ask for its early job
		// id checks foreman's health, not its job, and knows no job).
		job, req string
	}{
		{"wait", func(ctx context.Context, c *client.Client) error { _, err := c.Wait(ctx, stoppedJob); return err }, nil, stoppedJob, "GET /jobs/" + stoppedJob},
		{"chat told its job early", chat, []client.Option{client.WithOnQueued(func(string) {})}, stoppedJob, "GET /jobs/" + stoppedJob},
		{"chat", chat, nil, "", "GET /healthz"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// The subtest's own: a parallel subtest may start long after its parent's
			// body, past a deadline counted from there.
			ctx := testCtx(t)
			srv, askedEarly := stopping(t, false)
			opts := append([]client.Option{client.WithPollInterval(10 * time.Millisecond), client.WithAnswerTimeout(50 * time.Millisecond)}, tc.opts...)
			c := newClient(t, srv.URL, opts...)
			err := tc.call(ctx, c)
			var na *client.NoAnswerError
			if !errors.As(err, &na) || !errors.Is(err, client.ErrNoAnswer) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("%v (%T); want a *NoAnswerError", err, err)
			}
			// A 1xx is asked for only by a client told of its job early: a proxy in front
			// of foreman may mishandle one.
			if askedEarly.Load() != (tc.opts != nil) {
				t.Errorf("asked for the early job id: %v", askedEarly.Load())
			}
			if na.JobID != tc.job || na.Request != tc.req || na.Within != 50*time.Millisecond || na.URL != srv.URL {
				t.Errorf("%+v; want job %q, request %q, within 50ms, at %s", na, tc.job, tc.req, srv.URL)
			}
			if ctx.Err() != nil {
				t.Fatal("the test's own deadline ended the call")
			}
		})
	}
}

// loadedAnswerTimeout is the answer bound of the tests whose calls must succeed: each of
// their reads and checks is to be answered within it on a machine loaded by CI's other
// packages (at 50 ms one read was not, and the wait ended as foreman hung; at 500 ms a
// health check was not, on two cores running CI beside two other -race suites).
const loadedAnswerTimeout = 2 * time.Second

// A chat whose answer stays silent for many times the bound, while foreman answers the
// reads of its job (it waits in the queue), is not cut.
func TestAnswerTimeoutLetsASilentChatWait(t *testing.T) {
	t.Parallel()
	srv, _ := stopping(t, true)
	c := newClient(t, srv.URL, client.WithAnswerTimeout(loadedAnswerTimeout))
	r, err := c.Chat(testCtx(t), client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}}, nil)
	if err != nil || r.Message.Content != "late" {
		t.Fatalf("Chat = %+v, %v; want the late answer", r, err)
	}
}

// Submit's submit is one request of the wait: bounded by WithAnswerTimeout (no
// SubmitTimeout), a foreman that takes it and answers nothing ends Submit with the
// *NoAnswerError WithAnswerTimeout promises, not a bare context.DeadlineExceeded.
func TestAnswerTimeoutBoundsSubmitsSubmit(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /jobs", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		<-r.Context().Done()
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	ctx := testCtx(t)
	c := newClient(t, srv.URL, client.WithPollingOnly(), client.WithAnswerTimeout(50*time.Millisecond))
	_, err := c.Submit(ctx, client.SubmitRequest{Chat: &client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}}})
	var na *client.NoAnswerError
	if !errors.As(err, &na) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Submit = %v (%T); want a *NoAnswerError", err, err)
	}
	if na.Request != "POST /jobs" || na.JobID != "" || na.Within != 50*time.Millisecond {
		t.Errorf("%+v; want POST /jobs, no job, within 50ms", na)
	}
	if ctx.Err() != nil {
		t.Fatal("the test's own deadline ended the call")
	}
}

// Submit's submit whose connection is not made within WithAnswerTimeout never reached
// foreman, as WithAnswerTimeout's doc says of any such request: a *ConnectionError
// (ErrUnreachable), not the *NoAnswerError of a foreman that took it and answered
// nothing, on which the CLI said "foreman or its job store may be hung ... the job may
// have been queued all the same" of a job that cannot have been.
func TestAnswerTimeoutSubmitNotSentIsUnreachable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		select { // every dial hangs: packets dropped
		case <-ctx.Done():
		case <-release:
		}
		return nil, errors.New("dial let go")
	}
	ctx := testCtx(t)
	c := newClient(t, srv.URL, client.WithHTTPClient(&http.Client{Transport: tr}), client.WithPollingOnly(),
		client.WithAnswerTimeout(50*time.Millisecond))
	_, err := c.Submit(ctx, client.SubmitRequest{Chat: &client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}}})
	var ce *client.ConnectionError
	if !errors.As(err, &ce) || !errors.Is(err, client.ErrUnreachable) || errors.Is(err, client.ErrNoAnswer) {
		t.Fatalf("Submit = %v (%T); want a *ConnectionError, foreman unreachable", err, err)
	}
	if ctx.Err() != nil {
		t.Fatal("the test's own deadline ended the call")
	}
}

// Submit's submit answered by a proxy's page is not made again, as a read of the job is
// (a POST may have made its job): Submit ends at once with the page, an *APIError with
// Raw set, as README and WithAnswerTimeout's doc say.
func TestAnswerTimeoutSubmitAnsweredByAProxysPageEndsAtOnce(t *testing.T) {
	t.Parallel()
	var posts atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("POST /jobs", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		posts.Add(1)
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = io.WriteString(w, "<html><body>502 Bad Gateway</body></html>")
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, client.WithPollingOnly(), client.WithAnswerTimeout(time.Hour))
	_, err := c.Submit(testCtx(t), client.SubmitRequest{Chat: &client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}}})
	var ae *client.APIError
	if !errors.As(err, &ae) || !ae.Raw || ae.Status != http.StatusBadGateway {
		t.Fatalf("Submit = %v (%T); want the proxy's 502 page, an *APIError with Raw", err, err)
	}
	if n := posts.Load(); n != 1 {
		t.Errorf("%d submits; want one", n)
	}
}

// A read whose connection is not made within WithAnswerTimeout (a host whose packets
// are dropped for a while: Wi-Fi gone, a Mac asleep) never reached foreman: it is
// foreman unreachable, which a wait rides out (still waiting), not foreman hung.
func TestAnswerTimeoutRidesOutAConnectThatHangs(t *testing.T) {
	t.Parallel()
	var reads atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		state := "queued"
		if reads.Add(1) > 1 {
			state = "failed"
		}
		w.Header().Set("Connection", "close") // every read dials
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"`+stoppedJob+`","kind":"chat","model":"tiny-a","state":"`+state+`","attempts":1,"created_at":"2025-01-02T03:04:00Z","error":"boom","result":null,"artifacts":[]}`)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	// The first dial connects; the next three hang (net/http may go on dialing after the
	// request gave up: they are let go at the test's end).
	var dials atomic.Int32
	hung := make(chan struct{}, 3)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if n := dials.Add(1); n > 1 && n <= 4 {
			hung <- struct{}{}
			select {
			case <-ctx.Done():
			case <-release:
			}
			return nil, errors.New("dial let go")
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	c := newClient(t, srv.URL, client.WithHTTPClient(&http.Client{Transport: tr}),
		client.WithPollInterval(10*time.Millisecond), client.WithAnswerTimeout(loadedAnswerTimeout))
	_, err := c.Wait(testCtx(t), stoppedJob)
	var je *client.JobError
	if !errors.As(err, &je) {
		t.Fatalf("Wait = %v (%T); want the job's failure, read once the host answered again", err, err)
	}
	if len(hung) != 3 {
		t.Errorf("%d dials hung; want 3", len(hung))
	}
}

// While a chat's answer is silent, a check whose connection is not made within the
// bound never reached foreman: like a refused one, it is not foreman hung, and the chat
// waits on (the stream, still open, tells whether foreman is there).
func TestAnswerTimeoutChatRidesOutACheckNotSent(t *testing.T) {
	t.Parallel()
	answered := make(chan struct{})
	var once sync.Once
	mux := http.NewServeMux()
	mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"`+stoppedJob+`","kind":"chat","model":"tiny-a","state":"queued","attempts":0,"created_at":"2025-01-02T03:04:00Z","error":"","result":null,"artifacts":[]}`)
		once.Do(func() { close(answered) })
	})
	mux.HandleFunc("POST /api/chat", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		w.Header().Set("X-Foreman-Job-Id", stoppedJob)
		w.WriteHeader(http.StatusEarlyHints)
		answerLate(w, r, answered)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	// The chat's dial connects; the checks' next two dials hang.
	var dials atomic.Int32
	hung := make(chan struct{}, 2)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if n := dials.Add(1); n > 1 && n <= 3 {
			hung <- struct{}{}
			select {
			case <-ctx.Done():
			case <-release:
			}
			return nil, errors.New("dial let go")
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	c := newClient(t, srv.URL, client.WithHTTPClient(&http.Client{Transport: tr}), client.WithAnswerTimeout(loadedAnswerTimeout), client.WithOnQueued(func(string) {}))
	r, err := c.Chat(testCtx(t), client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}}, nil)
	if err != nil || r.Message.Content != "late" {
		t.Fatalf("Chat = %+v, %v; want the late answer", r, err)
	}
	if len(hung) != 2 {
		t.Errorf("%d dials hung; want 2", len(hung))
	}
}

// A Chat whose line callback panics leaves no watch of its silence behind: one left would
// check on foreman every bound for as long as the caller's context lives (for ever, for
// context.Background(), in a server that recovers its handlers' panics). Not parallel:
// no other test's watch runs meanwhile.
func TestAnswerTimeoutWatchEndsWithAPanickingCallback(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/chat", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = io.WriteString(w, `{"model":"tiny-a","message":{"role":"assistant","content":"hi"},"done":true}`+"\n")
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, client.WithAnswerTimeout(time.Hour))
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the callback's panic did not come through")
			}
		}()
		_, _ = c.Chat(context.Background(), client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}},
			func(*client.ChatResponse) error { panic("callback") })
	}()
	buf := make([]byte, 1<<20)
	if st := buf[:runtime.Stack(buf, true)]; bytes.Contains(st, []byte("silenceWatch).run")) {
		t.Fatalf("the watch of the chat's silence still runs:\n%s", st)
	}
}

// A chat whose early job id never comes (a proxy drops 1xx), silent for many times the
// bound (a long model load), waits on while foreman answers the checks (GET /healthz,
// whatever its status, so long as the answer is foreman's: its {"error": ...} JSON; an
// empty 503 is no answer of foreman's, TestAnswerTimeoutEndsAChatWhoseProxyAnswersTheChecks).
func TestAnswerTimeoutLetsASilentChatWaitWithoutItsEarlyID(t *testing.T) {
	t.Parallel()
	var checks atomic.Int32
	answered := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"error":"job store temporarily unavailable, retry shortly"}`+"\n")
		if checks.Add(1) == 3 {
			close(answered)
		}
	})
	mux.HandleFunc("POST /api/chat", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		answerLate(w, r, answered)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, client.WithAnswerTimeout(loadedAnswerTimeout))
	r, err := c.Chat(testCtx(t), client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}}, nil)
	if err != nil || r.Message.Content != "late" {
		t.Fatalf("Chat = %+v, %v; want the late answer", r, err)
	}
}

// answerLate answers a chat with its one line ("late") once answered is closed, or not at
// all should the caller leave first.
func answerLate(w http.ResponseWriter, r *http.Request, answered <-chan struct{}) {
	select {
	case <-answered:
	case <-r.Context().Done():
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	_, _ = io.WriteString(w, `{"model":"tiny-a","message":{"role":"assistant","content":"late"},"done":true}`+"\n")
}
