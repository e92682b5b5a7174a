package client_test

import (
	"context"
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
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// proxyPage is what a reverse proxy in front of foreman answers in its place when it
// cannot reach foreman (502, 503) or had no answer from it in time (504).
type proxyPage struct {
	status      int
	contentType string
	body        string
}

var proxyPages = map[string]proxyPage{
	"nginx 502": {http.StatusBadGateway, "text/html", "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.27.0</center>\r\n</body>\r\n</html>\r\n"},
	"nginx 504": {http.StatusGatewayTimeout, "text/html", "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>nginx/1.27.0</center>\r\n</body>\r\n</html>\r\n"},
	"envoy 503": {http.StatusServiceUnavailable, "text/plain", "no healthy upstream"},
	"caddy 502": {http.StatusBadGateway, "", ""},
}

func (p proxyPage) write(w http.ResponseWriter) {
	if p.contentType != "" {
		w.Header().Set("Content-Type", p.contentType)
	}
	w.WriteHeader(p.status)
	_, _ = io.WriteString(w, p.body)
}

const proxiedJob = "01HZX3K4M5N6P7Q8R9S0T1V2W4"

const queuedRecord = `{"id":"` + proxiedJob + `","kind":"chat","model":"tiny-a","state":"queued","attempts":0,"created_at":"2025-01-02T03:04:00Z","error":"","result":null,"artifacts":[]}`

// A chat's answer that went silent behind a proxy (foreman hung, or its host gone: the
// proxy keeps the client's connection open) while the proxy answers every check in
// foreman's place, with its page of a 502, 503 or 504, ends with a *NoAnswerError
// within the bound, not never: a proxy's page is no answer of foreman's.
func TestAnswerTimeoutEndsAChatWhoseProxyAnswersTheChecks(t *testing.T) {
	t.Parallel()
	for name, page := range proxyPages {
		for _, began := range []bool{false, true} {
			t.Run(name+map[bool]string{false: ", nothing came", true: ", the answer began"}[began], func(t *testing.T) {
				t.Parallel()
				var checks atomic.Int32
				mux := http.NewServeMux()
				mux.HandleFunc("POST /api/chat", func(w http.ResponseWriter, r *http.Request) {
					_, _ = io.ReadAll(r.Body)
					if began {
						// foreman's headers and first chunk came through; then it went
						// silent, and the proxy holds the connection.
						w.Header().Set("X-Foreman-Job-Id", proxiedJob)
						w.Header().Set("Content-Type", "application/x-ndjson")
						_, _ = io.WriteString(w, `{"model":"tiny-a","message":{"role":"assistant","content":"hel"},"done":false}`+"\n")
						w.(http.Flusher).Flush()
					}
					<-r.Context().Done()
				})
				check := func(w http.ResponseWriter, r *http.Request) {
					checks.Add(1)
					page.write(w)
				}
				mux.HandleFunc("GET /jobs/{id}", check)
				mux.HandleFunc("GET /healthz", check)
				srv := httptest.NewServer(mux)
				t.Cleanup(srv.Close)
				// The test's own bound: before, the chat waited for ever. A check whose
				// request is not sent whole within the answer bound counts as foreman's
				// answer (unreachable, ridden out): the bound is long enough that a
				// loaded machine's checks are sent within it.
				ctx, cancel := context.WithTimeout(testCtx(t), 30*time.Second)
				defer cancel()
				c := newClient(t, srv.URL, client.WithPollInterval(10*time.Millisecond), client.WithAnswerTimeout(500*time.Millisecond))
				_, err := c.Chat(ctx, client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}}, nil)
				if ctx.Err() != nil {
					t.Fatalf("the chat still waited after %d checks answered by the proxy: %v", checks.Load(), err)
				}
				var na *client.NoAnswerError
				if !errors.As(err, &na) || !errors.Is(err, client.ErrNoAnswer) {
					t.Fatalf("Chat = %v (%T); want a *NoAnswerError", err, err)
				}
				wantJob, wantReq := "", "GET /healthz"
				if began {
					wantJob, wantReq = proxiedJob, "GET /jobs/"+proxiedJob
				}
				if !na.Silent || na.JobID != wantJob || na.Request != wantReq {
					t.Errorf("%+v; want silent, job %q, request %q", na, wantJob, wantReq)
				}
				if na.Instead == nil || na.Instead.Status != page.status || !na.Instead.Raw {
					t.Errorf("Instead = %#v; want the proxy's %d", na.Instead, page.status)
				}
				if msg := err.Error(); !strings.Contains(msg, http.StatusText(page.status)) {
					t.Errorf("%q does not say what answered in foreman's place", msg)
				}
			})
		}
	}
}

// foreman degraded (its job store refusing for now, its target stalled or down) still
// answers, with its own JSON: a silent chat whose checks get a 503 {"error": ...} from
// the job store, or a /healthz that says "degraded", waits on.
func TestAnswerTimeoutLetsASilentChatWaitOnADegradedForeman(t *testing.T) {
	t.Parallel()
	for _, early := range []bool{false, true} {
		t.Run(map[bool]string{false: "healthz", true: "job"}[early], func(t *testing.T) {
			t.Parallel()
			var checks atomic.Int32
			answered := make(chan struct{})
			checked := func() {
				if checks.Add(1) == 3 {
					close(answered)
				}
			}
			mux := http.NewServeMux()
			mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
				// As the gateway answers while its store refuses writes (statusOn).
				w.Header().Set("Content-Type", "application/json; charset=utf-8")
				w.Header().Set("Retry-After", "2")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, `{"error":"job store cannot write for now (see GET /healthz)"}`+"\n")
				checked()
			})
			mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json; charset=utf-8")
				_, _ = io.WriteString(w, `{"status":"degraded","degraded":true,"target":{"url":"http://127.0.0.1:11434","reachable":false,"error":"target stalled"},"nats":"ok","targets":[]}`+"\n")
				checked()
			})
			mux.HandleFunc("POST /api/chat", func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.ReadAll(r.Body)
				if early {
					w.Header().Set("X-Foreman-Job-Id", proxiedJob)
					w.WriteHeader(http.StatusEarlyHints)
				}
				answerLate(w, r, answered)
			})
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)
			opts := []client.Option{client.WithAnswerTimeout(loadedAnswerTimeout)}
			if early {
				opts = append(opts, client.WithOnQueued(func(string) {}))
			}
			r, err := newClient(t, srv.URL, opts...).Chat(testCtx(t), client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}}, nil)
			if err != nil || r.Message.Content != "late" {
				t.Fatalf("Chat = %+v, %v; want the late answer", r, err)
			}
		})
	}
}

// A proxy's page now and then (foreman restarting behind it, a connection of the
// proxy's that failed) is not the end: a check is asked again within the bound, and
// foreman's answer to it lets the chat wait on.
func TestAnswerTimeoutAsksAgainAfterAProxysPage(t *testing.T) {
	t.Parallel()
	var checks atomic.Int32
	answered := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		n := checks.Add(1)
		if n%2 == 1 {
			proxyPages["nginx 502"].write(w)
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_, _ = io.WriteString(w, `{"status":"ok","degraded":false,"target":{"reachable":true},"nats":"ok","targets":[]}`+"\n")
		if n == 6 {
			close(answered)
		}
	})
	mux.HandleFunc("POST /api/chat", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		answerLate(w, r, answered)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, client.WithPollInterval(10*time.Millisecond), client.WithAnswerTimeout(500*time.Millisecond))
	r, err := c.Chat(testCtx(t), client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}}, nil)
	if err != nil || r.Message.Content != "late" {
		t.Fatalf("Chat = %+v, %v after %d checks; want the late answer", r, err, checks.Load())
	}
}

// A real foreman behind a plain reverse proxy, its target stalled (the model's first
// token does not come): the chat's checks reach foreman, whose answers let it wait on.
func TestAnswerTimeoutLetsAChatWaitOnARealForemanBehindAProxy(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	f := startForeman(t, foremanConfig{Fake: ollamatest.Config{BeforeChat: func(ctx context.Context, _ string) error {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}}})
	target, err := url.Parse(f.URL)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1
	proxy := wholeBody(rp)
	var checks atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxy.ServeHTTP(w, r)
		if r.Method == http.MethodGet && (r.URL.Path == "/healthz" || strings.HasPrefix(r.URL.Path, "/jobs/")) && checks.Add(1) == 3 {
			close(release)
		}
	}))
	t.Cleanup(srv.Close)
	for _, early := range []bool{false, true} {
		opts := []client.Option{client.WithAnswerTimeout(500 * time.Millisecond)}
		if early {
			opts = append(opts, client.WithOnQueued(func(string) {}))
		}
		r, err := newClient(t, srv.URL, opts...).Chat(testCtx(t), client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}}, nil)
		if err != nil || r.Message.Content == "" {
			t.Fatalf("Chat (early id %v) = %+v, %v after %d checks; want the answer", early, r, err, checks.Load())
		}
	}
}

// A wait whose reads a proxy answers in foreman's place (foreman hung behind it, the
// proxy's own timeout shorter than the bound: its 504 comes first) ends with a
// *NoAnswerError within the bound, not a wait that retries a hung foreman for ever.
func TestAnswerTimeoutEndsAWaitWhoseProxyAnswersTheReads(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"nginx 504", "nginx 502"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var reads atomic.Int32
			mux := http.NewServeMux()
			mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
				if reads.Add(1) == 1 {
					w.Header().Set("Content-Type", "application/json")
					_, _ = io.WriteString(w, queuedRecord)
					return
				}
				proxyPages[name].write(w)
			})
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)
			// Bounds as TestAnswerTimeoutEndsAChatWhoseProxyAnswersTheChecks's: a read
			// not sent whole within the answer bound is ridden out.
			ctx, cancel := context.WithTimeout(testCtx(t), 30*time.Second)
			defer cancel()
			c := newClient(t, srv.URL, client.WithPollingOnly(), client.WithPollInterval(10*time.Millisecond), client.WithAnswerTimeout(500*time.Millisecond))
			_, err := c.Wait(ctx, proxiedJob)
			if ctx.Err() != nil {
				t.Fatalf("the wait still went on after %d reads answered by the proxy: %v", reads.Load(), err)
			}
			var na *client.NoAnswerError
			if !errors.As(err, &na) || na.JobID != proxiedJob || na.Request != "GET /jobs/"+proxiedJob || na.Silent {
				t.Fatalf("Wait = %v (%T); want a *NoAnswerError for the job's read", err, err)
			}
			if na.Instead == nil || na.Instead.Status != proxyPages[name].status {
				t.Errorf("Instead = %#v; want the proxy's page", na.Instead)
			}
		})
	}
}

// A proxy's page for less than the bound (foreman restarting behind it) is ridden out:
// the read is asked again, and foreman's answer goes on with the wait.
func TestAnswerTimeoutRidesOutAProxysPageForLessThanTheBound(t *testing.T) {
	t.Parallel()
	var reads atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		switch n := reads.Add(1); {
		case n == 1:
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, queuedRecord)
		case n <= 4:
			proxyPages["nginx 502"].write(w)
		default:
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, strings.Replace(queuedRecord, `"state":"queued"`, `"state":"failed"`, 1))
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, client.WithPollingOnly(), client.WithPollInterval(10*time.Millisecond), client.WithAnswerTimeout(2*time.Second))
	_, err := c.Wait(testCtx(t), proxiedJob)
	var je *client.JobError
	if !errors.As(err, &je) {
		t.Fatalf("Wait = %v (%T); want the job's failure, read once foreman answered again", err, err)
	}
}
