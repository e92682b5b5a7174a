package main

import (
	"bufio"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A client command interrupted by Ctrl-C while it waits for a job exits 130, as shells
// expect of an interrupted command, so that a script tells the interrupt from the job's
// failure (1); it exited 1. Each runs in a child process, which gets a real SIGINT once
// it shows the job's state.
func TestInterruptedClientCommandExits130(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	url := "http://" + a.Addr()
	t.Cleanup(fake.Hold("tiny-a")) // after the parallel subtests, unlike a defer
	r := runCLI(t, map[string]string{"FOREMAN_URL": url}, nil, nil, "submit", "-m", "tiny-a", "watched")
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 {
		t.Fatalf("submit: %s", r.stderr)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		stdout bool   // the job's state shows on stdout, else on stderr
		shown  string // in the line that shows it
	}{
		// Queued behind the held job.
		{"submit --wait", []string{"submit", "--wait", "-m", "tiny-a", "interrupted"}, false, "queued"},
		{"jobs watch ID", []string{"jobs", "watch", id}, true, id},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], tc.args...)
			cmd.Env = append(os.Environ(), "FOREMAN_TEST_RUN_MAIN=1", "FOREMAN_URL="+url)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			errOut, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			shows, other := io.Reader(errOut), io.Reader(out)
			if tc.stdout {
				shows, other = out, errOut
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			child := reapChild(t, cmd)
			go func() { _, _ = io.Copy(io.Discard, other) }()
			shown := make(chan struct{})
			go func() {
				sc := bufio.NewScanner(shows)
				seen := false
				for sc.Scan() {
					if !seen && strings.Contains(sc.Text(), tc.shown) {
						seen = true
						close(shown)
					}
				}
			}()
			select {
			case <-shown:
			case <-child.exited:
				t.Fatalf("%s ended before it showed its job: %v", tc.name, child.err)
			case <-time.After(time.Minute):
				t.Fatalf("%s did not show its job", tc.name)
			}
			if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			select {
			case <-child.exited:
			case <-time.After(time.Minute):
				t.Fatalf("%s still runs a minute after Ctrl-C", tc.name)
			}
			var exit *exec.ExitError
			if !errors.As(child.err, &exit) || exit.ExitCode() != 130 {
				t.Errorf("%s interrupted: %v, want exit status 130", tc.name, child.err)
			}
		})
	}
}
