package worker_test

import (
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// An answer that ends in an error frame (a runner that died at once: status 200, then
// {"error":...}) fails its job, and is no run of the model's: learned, it would tell the
// queue view that the model's jobs take no time, and every waiting job's ETA would be
// "any moment".
func TestAStreamErrorTeachesNoDuration(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNext(1, ollamatest.StreamError("llama runner process has terminated"))
	w := tb.start(t, worker.Config{})
	j := tb.chat(t, "tiny-a", 1)
	tb.waitState(t, j.ID, broker.StateFailed)
	if run, load := worker.Estimate(w, "tiny-a"); run != worker.PriorRunTime || load != worker.PriorLoadTime {
		t.Fatalf("after a job whose answer was an error: expected run %v, load %v; want the priors %v, %v",
			run, load, worker.PriorRunTime, worker.PriorLoadTime)
	}
	// A job that ran is learned before its end is stored (the test would show nothing
	// otherwise).
	ok := tb.chat(t, "tiny-a", 1)
	tb.waitState(t, ok.ID, broker.StateDone)
	if run, _ := worker.Estimate(w, "tiny-a"); run == worker.PriorRunTime {
		t.Fatal("a job that ran was not learned")
	}
}
