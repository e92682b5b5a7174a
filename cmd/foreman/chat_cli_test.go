package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

func reply(model, prompt string) string {
	return strings.Join(ollamatest.Reply(model, prompt, 5), "")
}

// firstWrite records whether the CLI's first write happened while the fake was still
// generating: a buffered answer would only be written after the call ended.
type firstWrite struct {
	fake   *ollamatest.Server
	mu     sync.Mutex
	writes int
	early  bool
}

func (w *firstWrite) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	if w.writes == 1 {
		calls := w.fake.Calls()
		for _, c := range calls {
			if c.Path == "/api/chat" && !c.Finished {
				w.early = true
			}
		}
	}
	return len(p), nil
}

func TestChatStreamsAsTokensArrive(t *testing.T) {
	t.Parallel()
	// Tokens come slowly, so a buffered answer would arrive long after the first token.
	fake := ollamatest.New(t, ollamatest.WithTokenDelay(200*time.Millisecond))
	a := testApp(t, fake.URL, nil)
	w := &firstWrite{fake: fake}
	r := runCLI(t, map[string]string{"FOREMAN_URL": "http://" + a.Addr()}, nil, w, "chat", "-m", "tiny-a", "hello", "world")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if want := reply("tiny-a:latest", "user: hello world\n") + "\n"; r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
	if !w.early || w.writes < 5 {
		t.Errorf("first write while generating: %v, writes %d; want the tokens written one by one as they arrive", w.early, w.writes)
	}
}

func TestChatStdinAndInteractive(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	vars := map[string]string{"FOREMAN_URL": "http://" + a.Addr()}

	r := runCLI(t, vars, strings.NewReader("why is the sky blue?\n"), nil, "chat", "-m", "tiny-b")
	if want := reply("tiny-b:latest", "user: why is the sky blue?\n") + "\n"; r.code != 0 || r.stdout != want {
		t.Fatalf("prompt on stdin: exit %d, stdout %q, want %q (stderr %s)", r.code, r.stdout, want, r.stderr)
	}

	// Multi-turn: the second turn carries the first question and answer.
	r = runCLI(t, vars, strings.NewReader("hello\n\nagain\n/bye\n"), nil, "chat", "-m", "tiny-a", "-i", "--system", "be brief")
	first := reply("tiny-a:latest", "system: be brief\nuser: hello\n")
	second := reply("tiny-a:latest", "system: be brief\nuser: hello\nassistant: "+first+"\nuser: again\n")
	if want := ">>> " + first + "\n>>> >>> " + second + "\n>>> \n"; r.code != 0 || r.stdout != want {
		t.Fatalf("interactive: exit %d, stdout %q, want %q (stderr %s)", r.code, r.stdout, want, r.stderr)
	}
}

var jobID = regexp.MustCompile(`^[0-9A-HJKMNP-TV-Z]{26}$`)

func TestSubmit(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	vars := map[string]string{"FOREMAN_URL": "http://" + a.Addr()}

	r := runCLI(t, vars, nil, nil, "submit", "-m", "tiny-a", "later")
	if id := strings.TrimSpace(r.stdout); r.code != 0 || !jobID.MatchString(id) {
		t.Fatalf("submit: exit %d, stdout %q (stderr %s); want a job id", r.code, r.stdout, r.stderr)
	}

	r = runCLI(t, vars, nil, nil, "submit", "-m", "tiny-a", "--wait", "now")
	if want := reply("tiny-a:latest", "user: now\n") + "\n"; r.code != 0 || r.stdout != want {
		t.Fatalf("submit --wait: exit %d, stdout %q, want %q (stderr %s)", r.code, r.stdout, want, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "job ") || lines[len(lines)-1] != "done" {
		t.Errorf("submit --wait stderr %q: want the job id, its states, done", r.stderr)
	}

	r = runCLI(t, vars, strings.NewReader(`{"kind":"generate","model":"tiny-b","prompt":"p","stream":false}`), nil,
		"submit", "--file", "-", "--wait", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"state": "done"`) || !strings.Contains(r.stdout, `"kind": "generate"`) {
		t.Fatalf("submit --file --json: exit %d, stdout %s, stderr %s", r.code, r.stdout, r.stderr)
	}

	fake.FailNextOn("/api/chat", 1, ollamatest.FailStatus(http.StatusBadRequest, "fake: refused")) // Ollama refuses the job in its turn
	r = runCLI(t, vars, nil, nil, "submit", "-m", "tiny-a", "--wait", "hi")
	if r.code == 0 || !strings.Contains(r.stderr, "failed") || !strings.HasPrefix(lastLine(r.stderr), "foreman: job ") {
		t.Fatalf("failing job: exit %d, stderr %q; want a one-line job failure", r.code, r.stderr)
	}

	// A chat on an embedding model is refused at submit, in Ollama's words.
	r = runCLI(t, vars, nil, nil, "submit", "-m", "tiny-embed", "--wait", "hi")
	if r.code == 0 || strings.TrimSpace(r.stdout) != "" || !strings.Contains(r.stderr, `"tiny-embed" does not support chat`) {
		t.Fatalf("embedding model: exit %d, stdout %q, stderr %q; want the refusal", r.code, r.stdout, r.stderr)
	}
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

func TestJobsWatch(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, map[string]string{
		"FOREMAN_NATS_LISTEN": "127.0.0.1:0", "FOREMAN_NATS_USER": "cli", "FOREMAN_NATS_PASSWORD": "cli-pw",
	})
	for name, vars := range map[string]map[string]string{
		"polling": {"FOREMAN_URL": "http://" + a.Addr()},
		"nats": {"FOREMAN_URL": "http://" + a.Addr(), "FOREMAN_CLIENT_NATS_URL": a.NATSListen(),
			"FOREMAN_NATS_USER": "cli", "FOREMAN_NATS_PASSWORD": "cli-pw"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			model := map[string]string{"polling": "tiny-a", "nats": "tiny-b"}[name]
			release := fake.Hold(model)
			defer release()
			r := runCLI(t, vars, nil, nil, "submit", "-m", model, "watched")
			id := strings.TrimSpace(r.stdout)
			if r.code != 0 {
				t.Fatalf("submit: %s", r.stderr)
			}
			done := make(chan cliResult)
			first := &signalWriter{c: make(chan struct{})}
			go func() { done <- runCLI(t, vars, nil, first, "jobs", "watch", id) }()
			select {
			case <-first.c: // watching a running job: let it finish now
			case w := <-done:
				t.Fatalf("jobs watch ended early: exit %d, stdout %q, stderr %q", w.code, w.stdout, w.stderr)
			}
			release()
			w := <-done
			lines := strings.Split(strings.TrimSpace(w.stdout), "\n")
			if w.code != 0 || len(lines) < 2 || strings.Contains(lines[0], "done") || !strings.Contains(lastLine(w.stdout), id+"  done") {
				t.Fatalf("jobs watch: exit %d, stdout %q, stderr %q; want running states, then done", w.code, w.stdout, w.stderr)
			}
			if strings.Contains(w.stderr, "polling instead") {
				t.Logf("NATS was not reachable, the watch polled: %s", w.stderr)
			}
		})
	}
}

// signalWriter closes c on the first write.
type signalWriter struct {
	c    chan struct{}
	once sync.Once
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.c) })
	return len(p), nil
}

// A chat that fails before any of its answer came prints nothing on stdout, only the
// error on stderr; one that fails mid-answer ends the answer's line first.
func TestChatErrorLeavesStdoutClean(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/chat", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !strings.Contains(string(body), "partly") && !strings.Contains(string(body), "killed") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, `{"error":"ollama is unreachable"}`)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = io.WriteString(w, `{"model":"m","message":{"role":"assistant","content":"half an"},"done":false}`+"\n")
		if strings.Contains(string(body), "killed") {
			// foreman killed mid-answer: the connection breaks.
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		_, _ = io.WriteString(w, `{"error":"stream cut"}`+"\n")
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	vars := map[string]string{"FOREMAN_URL": srv.URL}

	r := runCLI(t, vars, nil, nil, "chat", "-m", "m", "hi")
	if r.code == 0 || r.stdout != "" || !strings.Contains(r.stderr, "ollama is unreachable") {
		t.Errorf("refused chat: exit %d, stdout %q, stderr %q; want an error and an empty stdout", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, vars, nil, nil, "chat", "-m", "m", "partly")
	if r.code == 0 || r.stdout != "half an\n" || !strings.Contains(r.stderr, "stream cut") {
		t.Errorf("chat cut mid-answer: exit %d, stdout %q, stderr %q; want the part and its line ended", r.code, r.stdout, r.stderr)
	}
	// A connection that breaks mid-answer reached foreman: not "cannot reach".
	r = runCLI(t, vars, nil, nil, "chat", "-m", "m", "killed")
	if r.code == 0 || r.stdout != "half an\n" || !strings.Contains(r.stderr, "was cut short") || !strings.Contains(r.stderr, "foreman stopped") || strings.Contains(r.stderr, "cannot reach") {
		t.Errorf("chat whose connection broke: exit %d, stdout %q, stderr %q; want the part, its line ended, and an answer cut short", r.code, r.stdout, r.stderr)
	}
}
