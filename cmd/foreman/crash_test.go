package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// TestMain lets a test start this very binary as `foreman serve` in a child process, so a
// test can kill foreman for real (SIGKILL: no deferred cleanup, no graceful shutdown).
func TestMain(m *testing.M) {
	if os.Getenv("FOREMAN_TEST_RUN_MAIN") == "1" {
		os.Exit(execute(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
	}
	os.Exit(m.Run())
}

// childForeman is `foreman serve` running in a child process.
type childForeman struct {
	cmd  *exec.Cmd
	addr string
	nats string // the NATS listener for clients (FOREMAN_NATS_LISTEN), "" without one
	*childExit
}

// childExit is a started child process's end: exited is closed once the process has been
// reaped, and err is then its exit status.
type childExit struct {
	exited chan struct{}
	err    error
}

// reapChild waits for started cmd in the background, and kills it at the test's end.
func reapChild(t *testing.T, cmd *exec.Cmd) *childExit {
	x := &childExit{exited: make(chan struct{})}
	go func() {
		x.err = cmd.Wait()
		close(x.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-x.exited
	})
	return x
}

var (
	servingLine = regexp.MustCompile(`msg="foreman is serving" addr=(\S+)`)
	natsListen  = regexp.MustCompile(` nats_listen=(nats://\S+)`)
)

func startChild(t *testing.T, env ...string) *childForeman {
	t.Helper()
	cmd := exec.Command(os.Args[0], "serve")
	cmd.Env = append(os.Environ(), append([]string{"FOREMAN_TEST_RUN_MAIN=1"}, env...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &childForeman{cmd: cmd}
	addr := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		echo := os.Getenv("FOREMAN_TEST_CHILD_LOG") != ""
		for sc.Scan() {
			if echo {
				fmt.Fprintln(os.Stderr, sc.Text())
			}
			if m := servingLine.FindStringSubmatch(sc.Text()); m != nil {
				var nu string
				if n := natsListen.FindStringSubmatch(sc.Text()); n != nil {
					nu = n[1]
				}
				select {
				case addr <- [2]string{m[1], nu}:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	c.childExit = reapChild(t, cmd)
	select {
	case a := <-addr:
		c.addr, c.nats = a[0], a[1]
	case <-c.exited:
		t.Fatalf("foreman exited before serving: %v", c.err)
	case <-time.After(60 * time.Second):
		t.Fatal("foreman did not start serving")
	}
	return c
}

// kill ends the child with SIGKILL, as a crash or power loss would.
func (c *childForeman) kill(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-c.exited
}

// A job whose foreman is killed mid-run is redelivered when foreman comes back and ends
// exactly once: the target finishes it once, and the job is done. With the embedded
// server it runs again as soon as foreman is back, not after FOREMAN_ACK_WAIT.
func TestKilledMidJobCompletesOnceAfterRestart(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	dir := t.TempDir()
	env := []string{
		"FOREMAN_ADDR=127.0.0.1:0", "FOREMAN_DATA_DIR=" + dir, "FOREMAN_OLLAMA_URL=" + fake.URL,
		"FOREMAN_ACK_WAIT=15s", "FOREMAN_LOG_LEVEL=info",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	release := fake.Hold("tiny-a")
	first := startChild(t, env...)
	resp, err := http.Post("http://"+first.addr+"/jobs", "application/json",
		strings.NewReader(`{"model":"tiny-a","messages":[{"role":"user","content":"survive"}],"stream":false}`))
	if err != nil {
		t.Fatal(err)
	}
	var sub struct {
		JobID string `json:"job_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&sub); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit: %d %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	if err := fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatalf("the job never reached the target: %v", err)
	}
	waitDeliverySaved(t, ctx, dir, fake.Calls()[len(fake.Calls())-1].Started)
	first.kill(t)

	second := startChild(t, env...)
	// Below the 15s ACK_WAIT that the delivery saved before the kill still has to run:
	// waiting it out fails here.
	rerun, cancelRerun := context.WithTimeout(ctx, 10*time.Second)
	defer cancelRerun()
	if err := fake.WaitStarted(rerun, "tiny-a", 2); err != nil {
		t.Fatalf("the interrupted job did not run again promptly after the restart (ACK_WAIT 15s): %v", err)
	}
	release()
	waitChildJobDone(t, ctx, second.addr, sub.JobID)
	finished := 0
	for _, c := range fake.Calls() {
		if c.Path == "/api/chat" && c.Finished && !c.Canceled {
			finished++
		}
	}
	if finished != 1 {
		t.Fatalf("the target completed the job %d times, want exactly once; calls: %s", finished, fmt.Sprint(fake.Calls()))
	}
}

// waitChildJobDone polls GET /jobs/{id} on the foreman at addr until the job is done; it
// fails t if the job ends otherwise or ctx ends first.
func waitChildJobDone(t *testing.T, ctx context.Context, addr, id string) {
	t.Helper()
	for state := ""; state != "done"; {
		r, err := http.Get("http://" + addr + "/jobs/" + id)
		if err != nil {
			t.Fatal(err)
		}
		var job struct {
			State string `json:"state"`
			Error string `json:"error"`
		}
		_ = json.NewDecoder(r.Body).Decode(&job)
		r.Body.Close()
		if job.State == "failed" || job.State == "canceled" {
			t.Fatalf("job %s ended %s: %s", id, job.State, job.Error)
		}
		state = job.State
		select {
		case <-ctx.Done():
			t.Fatalf("job %s still %q", id, state)
		case <-time.After(20 * time.Millisecond): // polling with a deadline
		}
	}
}

// waitDeliverySaved waits until the embedded server has written a queue consumer's state
// to disk after since (the moment the target saw the job). The server saves a delivery
// lazily (here with the job's first InProgress, at ACK_WAIT/3); a kill before that loses
// the delivery itself, and the job comes back at once whatever foreman does, which is not
// the crash under test.
func waitDeliverySaved(t *testing.T, ctx context.Context, dir string, since time.Time) {
	t.Helper()
	pattern := filepath.Join(dir, "jetstream", "*", "streams", "FOREMAN_QUEUE", "obs", "*", "o.dat")
	for {
		files, _ := filepath.Glob(pattern)
		for _, f := range files {
			if st, err := os.Stat(f); err == nil && st.ModTime().After(since) {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no queue consumer state saved after %v (%s)", since, pattern)
		case <-time.After(10 * time.Millisecond): // polling with a deadline
		}
	}
}

// Sync chats queued when foreman is killed do not run after the restart: their callers
// went with the process. Their jobs end canceled without reaching the target, while the
// async job that was running runs again.
func TestSyncChatsOfAKilledForemanNeverRun(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	dir := t.TempDir()
	env := []string{
		"FOREMAN_ADDR=127.0.0.1:0", "FOREMAN_DATA_DIR=" + dir, "FOREMAN_OLLAMA_URL=" + fake.URL, "FOREMAN_LOG_LEVEL=info",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	release := fake.Hold("tiny-a")
	defer release()
	first := startChild(t, env...)
	base := "http://" + first.addr
	async := submitAsync(t, ctx, base, "tiny-a", "the async job")
	if err := fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatalf("the async job never reached the target: %v", err)
	}
	var callers sync.WaitGroup
	for i := range 4 {
		callers.Go(func() { streamUntilGone(ctx, base, "tiny-b", fmt.Sprintf("sync chat %d", i)) })
	}
	waitJobCount(t, ctx, base, 5)
	first.kill(t)
	callers.Wait()

	second := startChild(t, env...)
	base = "http://" + second.addr
	release()
	if st := waitTerminal(t, ctx, base, async); st != "done" {
		t.Fatalf("async job ended %q, want done", st)
	}
	waitAllEnded(t, ctx, base)
	resp, err := http.Get(base + "/jobs?model=tiny-b")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page struct {
		Jobs []struct {
			ID    string `json:"id"`
			State string `json:"state"`
			Error string `json:"error"`
		} `json:"jobs"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		t.Fatal(err)
	}
	if len(page.Jobs) != 4 {
		t.Fatalf("%d sync jobs listed, want 4", len(page.Jobs))
	}
	for _, j := range page.Jobs {
		if j.State != "canceled" || j.Error != broker.CallerGoneReason {
			t.Errorf("sync job %s: %s (%q), want canceled (%s)", j.ID, j.State, j.Error, broker.CallerGoneReason)
		}
	}
	for _, c := range fake.Calls() {
		if c.Model == "tiny-b:latest" && c.Path != "/api/show" { // not the look-up of its capabilities (ADR-0129)
			t.Errorf("a sync chat of the killed foreman reached the target: %+v", c)
		}
	}
}
