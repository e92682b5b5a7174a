package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A foreman that takes the connection and never answers (stopped with SIGSTOP, its store
// hung) does not hold a command that asks it once for ever: --timeout ends the command
// with a message that says what happened.
func TestCLITimeoutOnAHungForeman(t *testing.T) {
	t.Parallel()
	srv := hungForeman(t, nil)
	vars := map[string]string{"FOREMAN_URL": srv.URL}
	const id = "01HZX3K4M5N6P7Q8R9S0T1V2W3"
	for _, args := range [][]string{
		{"queue"}, {"jobs", "list"}, {"jobs", "get", id}, {"jobs", "cancel", id},
		{"ps"}, {"tags"}, {"top", "--once"}, {"submit", "-m", "tiny-a", "hi"},
		{"submit", "-m", "tiny-a", "--wait", "hi"}, // the submit is bounded, not the wait
		// Waits: their first request is bounded (ADR-0133).
		{"chat", "-m", "tiny-a", "hi"}, {"jobs", "watch", id},
	} {
		r, ok := runCLIWithin(t, 30*time.Second, vars, append(args, "--timeout", "100ms")...)
		if !ok {
			t.Fatalf("%v --timeout 100ms: still waiting for the hung foreman after 30 s", args)
		}
		want := "no answer from " + srv.URL + " within 100ms (--timeout)"
		if r.code == 0 || !strings.Contains(r.stderr, want) {
			t.Errorf("%v: exit %d, stderr %q; want an error saying %q", args, r.code, r.stderr, want)
		}
		// A submit whose answer did not come may have queued its job all the same.
		if args[0] == "submit" && !strings.Contains(r.stderr, "--idempotency-key makes a retry safe") {
			t.Errorf("submit: stderr %q does not say how to retry safely", r.stderr)
		}
	}
	if r := runCLI(t, vars, nil, nil, "queue", "--timeout", "-1s"); r.code == 0 || !strings.Contains(r.stderr, "--timeout: must be 0 (no limit) or more") {
		t.Errorf("--timeout -1s: exit %d, stderr %q", r.code, r.stderr)
	}
}

// hungForeman is a server that takes every request and never answers it (a foreman
// stopped with SIGSTOP, its store hung): each request is held until its client leaves
// or the test ends. first, when not nil, runs on each request before it is held.
func hungForeman(t *testing.T, first func(http.ResponseWriter, *http.Request)) *httptest.Server {
	t.Helper()
	hung := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if first != nil {
			first(w, r)
		}
		select {
		case <-hung:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(hung); srv.Close() })
	return srv
}

// The benches bound each request too: a foreman (or an Ollama) that takes the connection
// and never answers ended neither `bench chat` nor `bench submit -n`. Each says which
// side gave no answer within --timeout and what to look at.
func TestBenchTimeoutOnAHungSide(t *testing.T) {
	t.Parallel()
	srv := hungForeman(t, nil)
	fake := ollamatest.New(t)
	within := "no answer from " + srv.URL + " within 100ms (--timeout)"
	for _, tc := range []struct {
		name string
		url  string
		args []string
		want []string
	}{
		{"chat, foreman hung", srv.URL, []string{"bench", "chat", "--direct", fake.URL, "-m", "tiny-a", "-n", "1", "--warmup", "0"},
			[]string{"chat through foreman: " + within, "see its log and /queue"}},
		{"chat, Ollama hung", fake.URL, []string{"bench", "chat", "--direct", srv.URL, "-m", "tiny-a", "-n", "1", "--warmup", "0"},
			[]string{"chat straight to Ollama: " + within, "check --direct"}},
		{"submit -n", srv.URL, []string{"bench", "submit", "-n", "2", "--callers", "1"},
			[]string{"no submit was accepted (error: 2 (first error: " + within, "see its log and /healthz"}},
	} {
		r, ok := runCLIWithin(t, 30*time.Second, map[string]string{"FOREMAN_URL": tc.url}, append(tc.args, "--timeout", "100ms")...)
		if !ok {
			t.Fatalf("%s: still waiting for the hung side after 30 s", tc.name)
		}
		for _, w := range tc.want {
			if r.code != 1 || !strings.Contains(r.stderr, w) {
				t.Errorf("%s: exit %d, stderr %q; want exit 1 and %q", tc.name, r.code, r.stderr, w)
			}
		}
	}
	for _, args := range [][]string{{"bench", "chat", "--direct", fake.URL, "-m", "tiny-a"}, {"bench", "submit"}} {
		if r := runCLI(t, map[string]string{"FOREMAN_URL": srv.URL}, nil, nil, append(args, "--timeout", "-1s")...); r.code == 0 || !strings.Contains(r.stderr, "--timeout: must be 0 (no limit) or more") {
			t.Errorf("%v --timeout -1s: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}

// A side whose streamed answer began and then stopped is not one that gave no answer:
// `bench chat --stream` says the answer did not end within --timeout. It said "no answer
// from URL ... may be hung, or the chat waits behind other jobs", of a side that had
// answered at once.
func TestBenchChatStreamThatStopsSaysItBegan(t *testing.T) {
	t.Parallel()
	srv := hungForeman(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = io.WriteString(w, `{"message":{"role":"assistant","content":"a"},"done":false}`+"\n")
		_ = http.NewResponseController(w).Flush()
	})
	fake := ollamatest.New(t)
	r, ok := runCLIWithin(t, 30*time.Second, map[string]string{"FOREMAN_URL": srv.URL},
		"bench", "chat", "--direct", fake.URL, "-m", "tiny-a", "-n", "1", "--warmup", "0", "--stream", "--timeout", "100ms")
	if !ok {
		t.Fatal("still waiting for the stopped stream after 30 s")
	}
	want := "chat through foreman: the answer from " + srv.URL + " began but did not end within 100ms (--timeout)"
	if r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, want)
	}
}
