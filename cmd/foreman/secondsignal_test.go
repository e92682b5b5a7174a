package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// An operator who stops foreman (Ctrl-C, SIGTERM) and then stops it again, seeing the
// shutdown wait for a running job, has it cut short: the process exits at once, as at
// the shutdown's deadline, and the cut job is not lost: the next start runs it. The
// second signal did nothing before, and the shutdown waited out FOREMAN_SHUTDOWN_TIMEOUT.
func TestSecondStopCutsTheShutdownShort(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	env := []string{
		"FOREMAN_ADDR=127.0.0.1:0", "FOREMAN_DATA_DIR=" + t.TempDir(), "FOREMAN_OLLAMA_URL=" + fake.URL,
		"FOREMAN_SHUTDOWN_TIMEOUT=10m", "FOREMAN_LOG_LEVEL=info",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	release := fake.Hold("tiny-a")
	defer release()
	first := startChild(t, env...)
	resp, err := http.Post("http://"+first.addr+"/jobs", "application/json",
		strings.NewReader(`{"kind":"chat","model":"tiny-a","messages":[{"role":"user","content":"long"}]}`))
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
		t.Fatal(err)
	}

	// The first stop: the shutdown waits for the running job, which the fake holds.
	if err := first.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	// Seen once its HTTP listener is closed (two signals sent at once may arrive as one).
	for {
		r, err := http.Get("http://" + first.addr + "/healthz")
		if err != nil {
			break
		}
		r.Body.Close()
		select {
		case <-ctx.Done():
			t.Fatal("foreman still serving after the first stop")
		case <-time.After(20 * time.Millisecond): // polling with a deadline
		}
	}
	select {
	case <-first.exited:
		t.Fatalf("foreman exited on the first stop while its job ran: %v", first.err)
	default:
	}
	if err := first.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.exited:
	case <-time.After(time.Minute): // far below the 10 minutes the shutdown would wait
		t.Fatal("foreman still shutting down a minute after the second stop")
	}
	if first.err == nil {
		t.Error("foreman exited 0 after a shutdown cut short, want a failure")
	}

	release()
	second := startChild(t, env...)
	waitChildJobDone(t, ctx, second.addr, sub.JobID)
}
