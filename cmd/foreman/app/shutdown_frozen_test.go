package app_test

import (
	"context"
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
