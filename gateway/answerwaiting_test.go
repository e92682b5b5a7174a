package gateway

import (
	"context"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A sync call whose handler reaches the job only after AnswerWaiting has begun (its body
// still coming in as foreman began to stop) is refused at once, with no job made for
// it. Counted among the responses AnswerWaiting waits for after its wait had begun, it
// misused their WaitGroup: here the wait, woken as the last response it waited for
// ended, met a count risen again (Go panics "WaitGroup is reused before previous Wait
// has returned", or the race detector reports the count's rise).
func TestSyncCallAfterAnswerWaitingBeganIsRefused(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t) // no worker: the first job stays queued
	ctx := testCtx(t, 30*time.Second)
	entered, hold := make(chan struct{}), make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	t.Cleanup(release)
	var submitted atomic.Int32
	b.GW.trace = func(_, stage string, _ time.Time) {
		if stage == traceSubmitted && submitted.Add(1) == 1 {
			close(entered)
			<-hold // the first response, counted, waits here
		}
	}
	first := make(chan rawResponse, 1)
	go func() { first <- post(t, ctx, b.URL, "/api/chat", chatBody("tiny-a", "first", "false")) }()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the first call never submitted its job")
	}
	waited := make(chan error, 1)
	go answerWaiting(ctx, b.GW, waited) // its frame tells this test's wait among the parallel tests'
	eventually(t, 10*time.Second, "AnswerWaiting waiting for the first response", func() bool {
		return goroutineIn("sync.(*WaitGroup).Wait(", "gateway.(*Server).AnswerWaiting.func", "in goroutine "+goroutineOf("gateway.answerWaiting("))
	})
	release()
	if got := <-first; got.Status != http.StatusServiceUnavailable {
		t.Fatalf("first call: %d %s, want 503 as foreman stops", got.Status, got.Body)
	}
	// Not after AnswerWaiting has returned: that would order the wait before this call.
	got := post(t, ctx, b.URL, "/api/chat", chatBody("tiny-a", "second", "false"))
	if got.Status != http.StatusServiceUnavailable || !strings.Contains(errorBody(t, got.Body), "shutting down") {
		t.Fatalf("call after AnswerWaiting began: %d %s, want 503 shutting down", got.Status, got.Body)
	}
	if n := submitted.Load(); n != 1 {
		t.Errorf("%d jobs submitted, want only the first call's", n)
	}
	if err := <-waited; err != nil {
		t.Fatalf("AnswerWaiting: %v", err)
	}
}

// answerWaiting runs s.AnswerWaiting and sends its error to waited.
func answerWaiting(ctx context.Context, s *Server, waited chan<- error) {
	waited <- s.AnswerWaiting(ctx)
}

// goroutineIn reports whether a goroutine's stack now holds every one of frames.
func goroutineIn(frames ...string) bool {
	for _, g := range goroutineStacks() {
		all := true
		for _, f := range frames {
			all = all && strings.Contains(g, f)
		}
		if all {
			return true
		}
	}
	return false
}

// goroutineOf is the id of a goroutine whose stack now holds frame ("?" for none), as
// stacks name the goroutine that created another ("created by ... in goroutine N").
func goroutineOf(frame string) string {
	for _, g := range goroutineStacks() {
		if strings.Contains(g, frame) {
			id, _, _ := strings.Cut(strings.TrimPrefix(g, "goroutine "), " ")
			return id + "\n"
		}
	}
	return "?"
}

// goroutineStacks are the stacks of every goroutine now, one a string.
func goroutineStacks() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Split(string(buf[:n]), "\n\n")
		}
		buf = make([]byte, 2*len(buf))
	}
}
