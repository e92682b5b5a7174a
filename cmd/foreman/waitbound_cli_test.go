package main

import (
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// stoppedForeman answers as foreman does until it is stopped (SIGSTOP, its job store
// hung) just after the first read of job id: the submit, a chat's early job id and that
// read are answered; from then on every request is taken and never answered.
func stoppedForeman(t *testing.T, id string) string {
	t.Helper()
	hung := make(chan struct{})
	hang := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hung:
		case <-r.Context().Done():
		}
	}
	var reads atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("POST /jobs", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		if bytes.Contains(body, []byte("state_webhook_url")) {
			// foreman's default webhook policy refuses a loopback receiver: the wait polls.
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"error":"state_webhook_url: loopback addresses are refused"}`)
			return
		}
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"job_id":"`+id+`"}`)
	})
	mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != id || reads.Add(1) > 1 {
			hang(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"`+id+`","kind":"chat","model":"tiny-a","state":"queued","attempts":0,"created_at":"2025-01-02T03:04:00Z","error":"","result":null,"artifacts":[]}`)
	})
	mux.HandleFunc("POST /api/chat", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body) // else net/http does not see the client leave
		if r.Header.Get("X-Foreman-Early-Job-Id") != "" {
			w.Header().Set("X-Foreman-Job-Id", id)
			w.WriteHeader(http.StatusEarlyHints)
		}
		hang(w, r)
	})
	mux.HandleFunc("/", hang) // /healthz too
	srv := httptest.NewServer(mux)
	t.Cleanup(func() { close(hung); srv.Close() })
	return srv.URL
}

// chat, submit --wait and jobs watch wait for their job as long as it takes, but not for
// a foreman that stopped answering while they waited: each request of the wait (a read
// of the job, a check that foreman answers while a chat's answer is silent) has
// --timeout to be answered. The command says so, names the job and how to follow it,
// and exits non-zero; before, only Ctrl-C ended it.
func TestCLIWaitsGiveUpOnAStoppedForeman(t *testing.T) {
	t.Parallel()
	const id = "01HZX3K4M5N6P7Q8R9S0T1V2W3"
	for _, args := range [][]string{
		{"chat", "-m", "tiny-a", "hi"},
		{"submit", "-m", "tiny-a", "--wait", "hi"},
		{"jobs", "watch", id},
	} {
		t.Run(args[0], func(t *testing.T) {
			t.Parallel()
			base := stoppedForeman(t, id)
			r, ok := runCLIWithin(t, 30*time.Second, map[string]string{"FOREMAN_URL": base}, append(args, "--timeout", "100ms")...)
			if !ok {
				t.Fatalf("%v --timeout 100ms: still waiting for the stopped foreman after 30 s", args)
			}
			wants := []string{"no answer from " + base + " within 100ms (--timeout): foreman or its job store may be hung"}
			if args[0] != "chat" {
				// A chat not on a terminal asks for no early job id (a 1xx a proxy may
				// mishandle): it checks /healthz, and knows no job to name.
				wants = append(wants, "foreman jobs watch "+id)
			}
			for _, want := range wants {
				if r.code == 0 || !strings.Contains(r.stderr, want) {
					t.Errorf("%v: exit %d, stderr %q; want an error saying %q", args, r.code, r.stderr, want)
				}
			}
			// The job's state, seen before foreman stopped, is jobs watch's output.
			if out := strings.TrimSpace(r.stdout); out != "" && (args[0] != "jobs" || !strings.HasSuffix(out, id+"  queued    tiny-a")) {
				t.Errorf("%v: stdout %q, want nothing but the state seen", args, r.stdout)
			}
		})
	}
}

// A proxy in front of foreman answers in its place once foreman stops answering (its
// host gone, or foreman hung past the proxy's own timeout, shorter than --timeout): the
// job's reads and a chat's checks get nginx's 504 page at once, and the chat's answer
// is held open by the proxy. Each command ends within --timeout, saying what answered
// in foreman's place; before, each waited for ever, taking the page for an answer.
func TestCLIWaitsGiveUpOnAForemanAProxyAnswersFor(t *testing.T) {
	t.Parallel()
	const id = "01HZX3K4M5N6P7Q8R9S0T1V2W3"
	const page = "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>nginx/1.27.0</center>\r\n</body>\r\n</html>\r\n"
	for _, args := range [][]string{
		{"chat", "-m", "tiny-a", "hi"},
		{"submit", "-m", "tiny-a", "--wait", "hi"},
		{"jobs", "watch", id},
	} {
		t.Run(args[0], func(t *testing.T) {
			t.Parallel()
			foreman, err := url.Parse(stoppedForeman(t, id))
			if err != nil {
				t.Fatal(err)
			}
			relay := httputil.NewSingleHostReverseProxy(foreman)
			relay.ErrorLog = log.New(io.Discard, "", 0) // the chat it relays ends canceled
			var reads atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet && (r.URL.Path != "/jobs/"+id || reads.Add(1) > 1) {
					w.Header().Set("Content-Type", "text/html")
					w.WriteHeader(http.StatusGatewayTimeout)
					_, _ = io.WriteString(w, page)
					return
				}
				relay.ServeHTTP(w, r)
			}))
			// A command still waiting (the test failed) is cut loose, so that the close
			// does not wait for it.
			t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
			r, ok := runCLIWithin(t, 10*time.Second, map[string]string{"FOREMAN_URL": srv.URL}, append(args, "--timeout", "300ms")...)
			if !ok {
				t.Fatalf("%v --timeout 300ms: still waiting after 10 s while the proxy answered for foreman", args)
			}
			want := "no answer from " + srv.URL + " within 300ms (--timeout)"
			if r.code == 0 || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "504 Gateway Timeout") {
				t.Errorf("%v: exit %d, stderr %q; want an error saying %q and naming the proxy's 504", args, r.code, r.stderr, want)
			}
		})
	}
}

// checkCounter is a proxy in front of a foreman that counts the GETs it answered (the
// waits' reads of their job, a chat's checks), and closes enough once n were.
type checkCounter struct {
	n      int32
	got    atomic.Int32
	once   sync.Once
	enough chan struct{}
}

func countChecks(t *testing.T, foreman string, n int32) (*checkCounter, string) {
	t.Helper()
	target, err := url.Parse(foreman)
	if err != nil {
		t.Fatal(err)
	}
	c := &checkCounter{n: n, enough: make(chan struct{})}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodGet && c.got.Add(1) >= c.n {
			c.once.Do(func() { close(c.enough) })
		}
		return nil
	}
	srv := httptest.NewServer(wholeBody(proxy))
	t.Cleanup(srv.Close)
	return c, srv.URL
}

// The other side: a job that waits far longer than --timeout behind another (the model's
// answer held) trips no bound, as long as foreman answers: each command is still waiting
// after foreman answered several of its requests, and ends well once the queue moves.
func TestCLIWaitsOutALongQueue(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"chat", "submit", "watch"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fake := ollamatest.New(t)
			release := fake.Hold("tiny-a")
			t.Cleanup(release)
			a := testApp(t, fake.URL, nil)
			direct := map[string]string{"FOREMAN_URL": "http://" + a.Addr()}
			ahead := runCLI(t, direct, nil, nil, "submit", "-m", "tiny-a", "ahead")
			if ahead.code != 0 {
				t.Fatalf("submit: exit %d, stderr %q", ahead.code, ahead.stderr)
			}
			aheadID := strings.TrimSpace(ahead.stdout)
			counter, base := countChecks(t, "http://"+a.Addr(), 4)
			args := map[string][]string{
				"chat":   {"chat", "-m", "tiny-a", "behind"},
				"submit": {"submit", "-m", "tiny-a", "--wait", "behind"},
				"watch":  {"jobs", "watch", aheadID},
			}[name]
			done := make(chan cliResult, 1)
			go func() {
				done <- runCLI(t, map[string]string{"FOREMAN_URL": base}, nil, nil, append(args, "--timeout", "300ms")...)
			}()
			select {
			case <-counter.enough:
			case r := <-done:
				t.Fatalf("%v --timeout 300ms ended while its job waited and foreman answered: exit %d, stderr %q", args, r.code, r.stderr)
			}
			release()
			r := <-done
			if r.code != 0 {
				t.Fatalf("%v: exit %d, stderr %q", args, r.code, r.stderr)
			}
			want := map[string]string{
				"chat":   reply("tiny-a:latest", "user: behind\n") + "\n",
				"submit": reply("tiny-a:latest", "user: behind\n") + "\n",
			}[name]
			if name == "watch" {
				if !strings.Contains(lastLine(r.stdout), aheadID+"  done") {
					t.Errorf("jobs watch: stdout %q, want the job done last", r.stdout)
				}
			} else if r.stdout != want {
				t.Errorf("%v: stdout %q, want %q", args, r.stdout, want)
			}
		})
	}
}

// A watch that gave up on one read foreman left unanswered for --timeout, foreman
// answering the reads after, says what ended it (the watch's own word, WatchWhy: no
// read of the job again to guess) and how to go on, not only that it ended.
func TestCLIJobsWatchSaysAReadWentUnanswered(t *testing.T) {
	t.Parallel()
	const id = "01HZX3K4M5N6P7Q8R9S0T1V2W3"
	var reads atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		if reads.Add(1) == 2 {
			<-r.Context().Done()
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"`+id+`","kind":"chat","model":"tiny-a","state":"queued","attempts":0,"created_at":"2025-01-02T03:04:00Z","error":"","result":null,"artifacts":[]}`)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	r, ok := runCLIWithin(t, 30*time.Second, map[string]string{"FOREMAN_URL": srv.URL}, "jobs", "watch", id, "--timeout", "100ms")
	if !ok {
		t.Fatal("jobs watch: still running after 30 s")
	}
	for _, want := range []string{"no answer from " + srv.URL + " within 100ms (--timeout)", "job " + id + " goes on: foreman jobs watch " + id} {
		if r.code == 0 || !strings.Contains(r.stderr, want) {
			t.Errorf("exit %d, stderr %q; want an error saying %q", r.code, r.stderr, want)
		}
	}
}
