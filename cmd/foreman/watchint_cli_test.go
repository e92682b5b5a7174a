package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A watch of one job interrupted (Ctrl-C) before the job ended exits non-zero and says
// so: a script that goes on when the watch of its job does (`jobs watch "$ID" && ...`)
// must not take an interrupt for the job's end. A watch of every job, which runs until
// interrupted, still ends with 0.
func TestJobsWatchInterruptedBeforeTheJobEnds(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	vars := map[string]string{"FOREMAN_URL": "http://" + a.Addr()}
	release := fake.Hold("tiny-a")
	defer release()
	r := runCLI(t, vars, nil, nil, "submit", "-m", "tiny-a", "watched")
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 {
		t.Fatalf("submit: %s", r.stderr)
	}
	for _, tc := range []struct {
		name string
		args []string
		fail bool
	}{
		{"one job", []string{"jobs", "watch", id}, true},
		{"every job", []string{"jobs", "watch"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, interrupt := context.WithCancel(context.Background())
			defer interrupt()
			var out, errOut bytes.Buffer
			first := &signalWriter{c: make(chan struct{})}
			e := &env{
				stdin: strings.NewReader(""), stdout: io.MultiWriter(&out, first), stderr: &errOut,
				getenv: func(k string) string { return vars[k] },
				now:    func() time.Time { return fixedNow },
				ctx:    ctx,
			}
			done := make(chan int, 1)
			go func() { done <- run(e, tc.args) }()
			select {
			case <-first.c: // the running job's state is shown: now the interrupt
			case code := <-done:
				t.Fatalf("jobs watch ended early: exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
			}
			interrupt()
			code := <-done
			switch {
			case tc.fail && (code == 0 || !strings.Contains(errOut.String(), "interrupted before job "+id+" ended")):
				t.Errorf("exit %d, stderr %q; want a failure saying the job had not ended", code, errOut.String())
			case !tc.fail && code != 0:
				t.Errorf("exit %d, stderr %q; want 0", code, errOut.String())
			}
		})
	}
}
