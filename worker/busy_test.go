package worker_test

import (
	"fmt"
	"net/http"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A target that answers "not now" (503: Ollama's own queue is full, as other clients use
// it too; 429 from a proxy in front of it) gets the job again after the back-off, and the
// job ends done on its next attempt instead of failing for good.
func TestBusyTargetIsRetried(t *testing.T) {
	t.Parallel()
	for _, code := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			t.Parallel()
			tb := setup(t)
			tb.fake.FailNext(1, ollamatest.FailStatus(code, "server busy, please try again.  maximum pending requests exceeded"))
			j := tb.chat(t, "tiny-a", 1)
			tb.start(t, worker.Config{})
			got := tb.waitState(t, j.ID, broker.StateDone)
			if got.Attempt != 2 {
				t.Errorf("done after %d attempts, want 2", got.Attempt)
			}
			if n := len(inferenceCalls(tb.fake)); n != 2 {
				t.Errorf("target called %d times, want 2", n)
			}
		})
	}
}
