package app_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A shutdown whose deadline has passed does not wait on a NATS that answers nothing (a
// frozen node, a lost link): the presence withdrawn, the webhook consumer released and the
// target marked stopped each waited 5 s of their own for it, so a foreman told to stop
// within FOREMAN_SHUTDOWN_TIMEOUT=1s took 10 s, and a service manager's kill came first.
// Past the deadline foreman closes its connection under them, which fails them at once.
func TestShutdownPastItsDeadlineDoesNotWaitOnAFrozenNATS(t *testing.T) {
	t.Parallel()
	mac := ollamatest.New(t)
	fr := newFreezer(t, sharedNATS(t))
	fa := startForeman(t, fr.url(), "mac-a", mac.URL)
	waitTargets(t, fa, 1)
	fr.freeze(true)
	defer fr.freeze(false)

	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the deadline is already past
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = fa.Shutdown(ctx)
	}()
	// Not a measure of speed: the bound is far above what a shutdown with nothing left to
	// wait for takes, and below the 10 s that the parts' own waits add up to.
	select {
	case <-done:
	case <-time.After(8 * time.Second):
		t.Fatal("Shutdown past its deadline still waits on the frozen NATS")
	}
}

// A job that ends while the NATS answers nothing (a frozen node, a store whose disk
// stalls) does not hold the shutdown past its deadline: the worker's terminal write of it
// is tried again for 20 s, whatever the stop, and a foreman told to stop within 1 s took
// 22 s (with the default 30 s, a job ending as the operator stopped foreman took it past
// a service manager's 40 s grace, and its kill came first). Past the deadline foreman
// closes its connection under the worker, which ends those tries at once; the job's
// message, un-acked, comes back after its ack wait, as after a crash.
func TestShutdownDoesNotWaitOutATerminalWriteOnAFrozenNATS(t *testing.T) {
	t.Parallel()
	mac := ollamatest.New(t)
	release := mac.Hold("")
	defer release()
	fr := newFreezer(t, sharedNATS(t))
	fa := startForeman(t, fr.url(), "mac-a", mac.URL)
	waitTargets(t, fa, 1)
	if code, b := call(t, fa, http.MethodPost, "/jobs", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`); code != http.StatusAccepted {
		t.Fatalf("POST /jobs: %d %s", code, b)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := mac.WaitInFlight(wctx, 1); err != nil {
		t.Fatal(err)
	}
	fr.freeze(true)
	defer fr.freeze(false)
	release() // the job ends now, its end written to the frozen NATS
	if err := mac.WaitFinished(wctx, "/api/chat", 1); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = fa.Shutdown(ctx)
	}()
	// Not a measure of speed: far above the 1 s deadline, far below the 20 s of tries.
	select {
	case <-done:
	case <-time.After(8 * time.Second):
		t.Fatal("Shutdown waits out the worker's terminal write to the frozen NATS past its deadline")
	}
}
