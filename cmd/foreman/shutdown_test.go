package main

import (
	"bufio"
	"context"
	"io"
	"net"
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

// A short shutdown deadline run out only by connections that hold no request (one opened
// and silent, as a browser opens ahead of its requests; one that sent part of a request's
// header; an idle keep-alive) is no failure: they are closed and serve exits 0. Go's
// HTTP server waits up to 5 s for a new connection's first request.
func TestShutdownClosesConnectionsHoldingNoRequest(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })
	silent, err := net.Dial("tcp", a.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	partial, err := net.Dial("tcp", a.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer partial.Close()
	if _, err := io.WriteString(partial, "GET /healthz HTTP/1.1\r\n"); err != nil {
		t.Fatal(err)
	}
	if code, _ := getHealthz(t, a.Addr()); code != http.StatusOK {
		t.Fatalf("healthz: %d", code)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with no request unanswered: %v", err)
	}
	if _, err := silent.Read(make([]byte, 1)); err == nil {
		t.Fatal("the silent connection is still open after the shutdown")
	}
}

// A request still being answered when the deadline comes (here a body that stopped
// arriving halfway) makes the shutdown fail, naming it.
func TestShutdownFailsForARequestStillBeingAnswered(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })
	c, err := net.Dial("tcp", a.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	head := "POST /jobs HTTP/1.1\r\nHost: " + a.Addr() + "\r\nContent-Type: application/json\r\n" +
		"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n"
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	// The server says "100 Continue" once the handler reads the body: the request is in.
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || !strings.Contains(line, "100 Continue") {
		t.Fatalf("first line %q, %v; want 100 Continue", line, err)
	}
	if _, err := io.WriteString(c, `{"model":`); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err = a.Shutdown(ctx)
	if err == nil || !strings.Contains(err.Error(), "requests still being answered (1)") {
		t.Fatalf("shutdown with a request unanswered: %v, want it named", err)
	}
}

// On the embedded NATS server a sync caller whose job has not started is answered 503 as
// soon as a shutdown begins, its job canceled as never run: no other foreman could run
// it, and the stopping worker takes no job. It waited for the running job to finish (up
// to the deadline less a quarter) before. The running job's caller gets its answer.
func TestShutdownAnswersAWaitingSyncCallerAtOnce(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })
	release := fake.Hold("tiny-a")
	defer release()
	type answer struct {
		status int
		id     string
		body   string
		err    error
	}
	call := func(content string) <-chan answer {
		ch := make(chan answer, 1)
		go func() {
			resp, err := http.Post("http://"+a.Addr()+"/api/chat", "application/json",
				strings.NewReader(`{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"`+content+`"}]}`))
			if err != nil {
				ch <- answer{err: err}
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			ch <- answer{status: resp.StatusCode, id: resp.Header.Get("X-Foreman-Job-Id"), body: string(b), err: err}
		}()
		return ch
	}
	running := call("first")
	if err := fake.WaitStarted(context.Background(), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	waiting := call("second")
	waitFor(t, "the second job queued", func() bool { return queueTotal(t, "http://"+a.Addr()) == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- a.Shutdown(ctx) }()
	var got answer
	select {
	case got = <-waiting:
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting caller got no answer while the running job ran")
	}
	if got.err != nil || got.status != http.StatusServiceUnavailable || !strings.Contains(got.body, "shutting down") {
		t.Fatalf("waiting caller: %d %q %v, want 503 shutting down", got.status, got.body, got.err)
	}
	j, _, err := a.Store().Get(context.Background(), got.id)
	if err != nil || j.State != "canceled" || j.Error != "foreman shut down before the job ran" || j.Attempt != 0 {
		t.Errorf("waiting caller's job %s: %+v %v, want canceled as never run", got.id, j, err)
	}
	release()
	if r := <-running; r.err != nil || r.status != http.StatusOK || !strings.Contains(r.body, `"done":true`) {
		t.Errorf("running caller: %d %q %v, want its answer", r.status, r.body, r.err)
	}
	if err := <-stopped; err != nil {
		t.Errorf("shutdown: %v", err)
	}
}
