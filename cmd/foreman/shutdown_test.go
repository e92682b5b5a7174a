package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A shutdown that cuts a streamed chat still running at its deadline ends under that
// deadline, without error: the worker gives the job up early enough for the cut answer
// to be written and the HTTP server to close within the same deadline.
func TestShutdownCutsARunningStreamWithinItsDeadline(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t, ollamatest.WithTokens(50), ollamatest.WithBeforeToken(func(ctx context.Context, i int) error {
		if i >= 2 {
			<-ctx.Done() // the Mac hangs mid-stream
			return ctx.Err()
		}
		return nil
	}))
	a := testApp(t, fake.URL, nil)
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })
	resp, err := http.Post("http://"+a.Addr()+"/api/chat", "application/json",
		strings.NewReader(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	if line, err := r.ReadString('\n'); err != nil || !strings.Contains(line, `"content"`) {
		t.Fatalf("first streamed line %q, %v", line, err)
	}

	// The worker gives up at three quarters of the deadline: the last quarter (2 s) is
	// for the cut answer and the servers' close, and for a stall of the machine.
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("shutdown returned after its deadline")
	}
	rest, _ := io.ReadAll(r)
	if !strings.Contains(string(rest), "shutting down") {
		t.Fatalf("the cut stream ended %q, want foreman's shutdown error", rest)
	}
}
