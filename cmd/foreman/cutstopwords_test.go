package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A shutdown cut short by a second stop ends serve with an error that says so, in
// foreman's words: it said Go's ("end waiting responses: context canceled"), which read
// as a fault of foreman's, not as the operator's own stop.
func TestSecondStopIsSaidInForemansWords(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	release := fake.Hold("tiny-a")
	defer release()
	cfg, err := parseConfig(t, nil, map[string]string{
		"FOREMAN_ADDR": "127.0.0.1:0", "FOREMAN_DATA_DIR": t.TempDir(), "FOREMAN_OLLAMA_URL": fake.URL,
		"FOREMAN_SHUTDOWN_TIMEOUT": "10m",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	stopNow := make(chan struct{})
	addr, done := serveInProcess(t, ctx, cfg, stopNow)
	// A sync chat waits for its held job: the shutdown has a response to end, and a job.
	go func() {
		resp, err := http.Post("http://"+addr+"/api/chat", "application/json",
			strings.NewReader(`{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"long"}]}`))
		if err == nil {
			resp.Body.Close()
		}
	}()
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	if err := fake.WaitStarted(wctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	stop() // the first stop: the shutdown waits for the held job
	waitNotServing(t, wctx, addr, done)
	close(stopNow) // the second
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "cut short by a second stop") || strings.Contains(err.Error(), "context canceled") {
			t.Errorf("serve ended with %v; want the cut said in foreman's words, not Go's", err)
		}
	case <-time.After(time.Minute): // far below the 10 minutes the shutdown would wait
		t.Fatal("the second stop did not cut the shutdown short")
	}
}
