package gateway

import (
	"net/http"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A job of a model the target lacks (deleted since the last poll: 404) starts loading,
// and loads nothing: foreman_model_loads_total counted it all the same. A load counts
// once the model answers.
func TestModelLoadsCountOnlyAnsweredLoads(t *testing.T) {
	t.Parallel()
	opt, start := withWorker(t)
	b := newTestBundle(t, opt)
	runUntilCleanup(t, "metrics", b.GW.RunMetrics)
	start()
	b.Fake.FailNext(1, ollamatest.FailStatus(http.StatusNotFound, `model "tiny-b" not found, try pulling it first`))
	waitJobState(t, b, jobsSubmit(t, b, `{"model":"tiny-b","messages":[{"role":"user","content":"gone"}]}`), broker.StateFailed)
	// The failed state comes after the loading one on the job's events: once it is
	// counted, the loading state was seen.
	fams := scrape(t, b)
	eventually(t, 20*time.Second, "the failed tiny-b job counted", func() bool {
		fams = scrape(t, b)
		return metricValue(fams, "foreman_jobs_total", "model", "tiny-b:latest", "state", "failed") == 1
	})
	if got := metricValue(fams, "foreman_model_loads_total", "model", "tiny-b:latest"); got > 0 {
		t.Errorf("foreman_model_loads_total{tiny-b} = %v after a job the target answered 404, want none", got)
	}

	waitJobState(t, b, jobsSubmit(t, b, `{"model":"tiny-b","messages":[{"role":"user","content":"back"}]}`), broker.StateDone)
	eventually(t, 20*time.Second, "the done tiny-b job counted", func() bool {
		fams = scrape(t, b)
		return metricValue(fams, "foreman_jobs_total", "model", "tiny-b:latest", "state", "done") == 1
	})
	if got := metricValue(fams, "foreman_model_loads_total", "model", "tiny-b:latest"); got != 1 {
		t.Errorf("foreman_model_loads_total{tiny-b} = %v after a tiny-b job that loaded it, want 1", got)
	}
}
