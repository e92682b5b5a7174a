package worker_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

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
	tb.fake.FailNext(1, ollamatest.StreamError("template: :1: function \"bad\" not defined"))
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

// A call that answers whole (an OpenAI image route: the picture comes in one piece) has
// its first byte at its end: one that had to load its model tells neither the load nor
// the run apart, and teaches nothing (learned, the whole generation would be the model's
// load time and its run none). Once the model is loaded, such a call is a run.
func TestAWholeAnswerThatLoadedTeachesNoLoadTime(t *testing.T) {
	t.Parallel()
	tb := setupFake(t, []ollamatest.Option{
		ollamatest.WithModels(ollamatest.Model{Name: "tiny-a"}, ollamatest.Model{Name: "pic", Image: true}),
		ollamatest.WithLoadDelay(20 * time.Millisecond), ollamatest.WithTokenDelay(5 * time.Millisecond),
	})
	var logs lockedBuffer
	w := tb.start(t, worker.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	body := `{"model":"pic","prompt":"a lighthouse"}`
	first := tb.submit(t, "pic", broker.KindOpenAIImages, body)
	tb.waitState(t, first.ID, broker.StateLoading)
	tb.waitState(t, first.ID, broker.StateDone)
	if run, load := worker.Estimate(w, "pic"); run != worker.PriorRunTime || load != worker.PriorLoadTime {
		t.Fatalf("after a whole answer that loaded its model: expected run %v, load %v; want the priors %v, %v",
			run, load, worker.PriorRunTime, worker.PriorLoadTime)
	}
	second := tb.submit(t, "pic", broker.KindOpenAIImages, body)
	tb.waitState(t, second.ID, broker.StateDone)
	if run, load := worker.Estimate(w, "pic"); run == worker.PriorRunTime || load != worker.PriorLoadTime {
		t.Fatalf("after a whole answer on the loaded model: expected run %v, load %v; want a run learned, the load's prior", run, load)
	}
	// The picture is one JSON object under Ollama's NDJSON type: whole, not a stream that
	// ended without done:true.
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("the image jobs logged warnings:\n%s", logs.String())
	}
}
