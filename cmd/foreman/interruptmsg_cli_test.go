package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// runInterrupted runs args in-process and ends their context, as a Ctrl-C does, once
// ready is closed (nil: once the first write to stderr shows the command at work).
func runInterrupted(t *testing.T, vars map[string]string, ready <-chan struct{}, args ...string) cliResult {
	t.Helper()
	ctx, interrupt := context.WithCancel(context.Background())
	defer interrupt()
	var out, errOut bytes.Buffer
	first := &signalWriter{c: make(chan struct{})}
	if ready == nil {
		ready = first.c
	}
	e := &env{
		stdin: strings.NewReader(""), stdout: &out, stderr: io.MultiWriter(&errOut, first),
		getenv: func(k string) string { return vars[k] },
		now:    func() time.Time { return fixedNow },
		ctx:    ctx,
	}
	done := make(chan int, 1)
	go func() { done <- run(e, args) }()
	select {
	case <-ready:
	case code := <-done:
		t.Fatalf("%v ended before the interrupt: exit %d, stdout %q, stderr %q", args, code, out.String(), errOut.String())
	}
	interrupt()
	code := <-done
	return cliResult{stdout: out.String(), stderr: errOut.String(), code: code}
}

// A command interrupted (Ctrl-C) while foreman has not answered says "interrupted", not
// Go's "context canceled" (the text of the error the interrupt left), which read like a
// fault of foreman's; a submit says its job may have been queued all the same.
func TestInterruptedCommandSaysInterrupted(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{}, 1)
	srv := hungForeman(t, func(http.ResponseWriter, *http.Request) {
		select {
		case arrived <- struct{}{}:
		default:
		}
	})
	vars := map[string]string{"FOREMAN_URL": srv.URL}
	const id = "01HZX3K4M5N6P7Q8R9S0T1V2W3"
	for _, args := range [][]string{
		{"chat", "-m", "tiny-a", "hi"}, {"submit", "-m", "tiny-a", "hi"}, {"submit", "--wait", "-m", "tiny-a", "hi"},
		{"queue"}, {"jobs", "list"}, {"jobs", "get", id}, {"jobs", "cancel", id}, {"jobs", "watch"},
		{"ps"}, {"tags"}, {"top", "--once"},
		{"bench", "chat", "--direct", srv.URL, "-m", "tiny-a"}, {"bench", "submit", "-n", "1", "--callers", "1"},
	} {
		// Drained: the request of the command before may have come after its interrupt.
		select {
		case <-arrived:
		default:
		}
		r := runInterrupted(t, vars, arrived, args...)
		if r.code == 0 || !strings.Contains(r.stderr, "interrupted") || strings.Contains(r.stderr, "context canceled") {
			t.Errorf("%v interrupted: exit %d, stderr %q; want a failure saying it was interrupted", args, r.code, r.stderr)
		}
		if args[0] == "submit" && !strings.Contains(r.stderr, "may have been queued all the same") {
			t.Errorf("%v interrupted: stderr %q does not say the job may have been queued", args, r.stderr)
		}
	}
}

// `submit --wait` interrupted while its job waits says which job it left, in which
// state, and that the job goes on, as `jobs watch ID` does; it said "client: waiting for
// job ID: context canceled".
func TestSubmitWaitInterruptedNamesItsJob(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	vars := map[string]string{"FOREMAN_URL": "http://" + a.Addr()}
	release := fake.Hold("tiny-a")
	defer release()
	r := runCLI(t, vars, nil, nil, "submit", "-m", "tiny-a", "held")
	if r.code != 0 {
		t.Fatalf("submit: %s", r.stderr)
	}
	// Queued behind the held job: the interrupt comes once stderr shows the job.
	w := runInterrupted(t, vars, nil, "submit", "--wait", "-m", "tiny-a", "interrupted")
	jobID := ""
	for _, line := range strings.Split(w.stderr, "\n") {
		if s, ok := strings.CutPrefix(line, "job "); ok {
			jobID = s
			break
		}
	}
	want := "interrupted before job " + jobID + " ended (last seen queued)"
	if w.code == 0 || jobID == "" || !strings.Contains(w.stderr, want) || !strings.Contains(w.stderr, "foreman jobs cancel "+jobID) {
		t.Errorf("exit %d, stderr %q; want a failure saying %q and how to cancel the job", w.code, w.stderr, want)
	}
}

// serve's error after a stop is its own (a shutdown cut short by a second stop wraps
// "context canceled"): it is not said as "interrupted", which a client command's is.
func TestServeKeepsItsOwnErrorAfterAStop(t *testing.T) {
	t.Parallel()
	root := newRootCmd(&env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }})
	ctx, stop := context.WithCancel(context.Background())
	stop()
	cut := fmt.Errorf("shutdown: drain: %w", context.Canceled)
	for _, tc := range []struct {
		cmd, want string
	}{
		{"serve", cut.Error()},
		{"queue", "interrupted"},
	} {
		cmd, _, err := root.Find([]string{tc.cmd})
		if err != nil {
			t.Fatal(err)
		}
		if got := sayInterrupted(ctx, cmd, cut); got.Error() != tc.want {
			t.Errorf("%s stopped: %q, want %q", tc.cmd, got, tc.want)
		}
	}
}
