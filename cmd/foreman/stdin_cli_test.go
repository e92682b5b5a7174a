package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// readingStdin is a stdin nothing is ever written to (a terminal nobody types at, a pipe
// whose writer stays open); reading is closed at the first read.
type readingStdin struct {
	r       *io.PipeReader
	reading chan struct{}
	once    sync.Once
}

func (s *readingStdin) Read(p []byte) (int, error) {
	s.once.Do(func() { close(s.reading) })
	return s.r.Read(p)
}

// A Ctrl-C while a command waits on stdin (its prompt, its --file -, the next line of an
// interactive chat) ends the command: foreman catches the signal to end the command's
// context, and the read of a terminal goes on through it, so `foreman submit -m MODEL`
// without a prompt, or `foreman chat` at its ">>> " prompt, ignored Ctrl-C twice, until
// the third ended the process.
func TestInterruptWhileReadingStdinEndsTheCommand(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"FOREMAN_URL": "http://127.0.0.1:1"} // never reached
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"submit's prompt", []string{"submit", "-m", "tiny-a"}},
		{"submit --file -", []string{"submit", "--file", "-"}},
		{"chat's prompt", []string{"chat", "-m", "tiny-a"}},
		{"chat -i", []string{"chat", "-i", "-m", "tiny-a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pr, pw := io.Pipe()
			t.Cleanup(func() { pw.Close() })
			in := &readingStdin{r: pr, reading: make(chan struct{})}
			ctx, interrupt := context.WithCancel(context.Background())
			defer interrupt()
			var out, errOut bytes.Buffer
			e := &env{
				stdin: in, stdout: &out, stderr: &errOut,
				getenv: func(k string) string { return vars[k] },
				now:    func() time.Time { return fixedNow },
				ctx:    ctx,
			}
			done := make(chan int, 1)
			go func() { done <- run(e, tc.args) }()
			select {
			case <-in.reading:
			case code := <-done:
				t.Fatalf("ended before it read stdin: exit %d, stderr %q", code, errOut.String())
			}
			interrupt()
			// Far more than an interrupted command takes; the read itself never ends.
			select {
			case code := <-done:
				if code == 0 || !strings.Contains(errOut.String(), "interrupted") {
					t.Errorf("exit %d, stderr %q; want a failure saying it was interrupted", code, errOut.String())
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the command still waits on stdin after its interrupt")
			}
		})
	}
}
