package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// scrape reads /metrics with the Prometheus text parser.
func scrape(t *testing.T, b *testBundle) map[string]*dto.MetricFamily {
	t.Helper()
	resp, out := b.request(t, http.MethodGet, "/metrics", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, out)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	for name, f := range fams {
		if len(name) > 8 && name[:8] == "foreman_" && f.GetHelp() == "" {
			t.Errorf("%s has no HELP", name)
		}
	}
	return fams
}

// metricValue is the value of the series of family name with exactly labels (name=value
// pairs): a counter's or gauge's value, a histogram's sample count; -1 when absent.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel())*2 != len(labels) {
			continue
		}
		for i := 0; i < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return -1
}

// After a known workload on the fake Ollama (two tiny-a jobs, one of which the target
// fails, a low tiny-b job, a tiny-a job canceled while queued, webhooks to a receiver
// that answers and to one that always fails) /metrics carries the queue depth while the
// jobs wait and then the exact counts of ends, waits, runs, loads and deliveries.
func TestMetricsAfterKnownWorkload(t *testing.T) {
	t.Parallel()
	opt, start := withWorker(t)
	b := newTestBundle(t, opt)
	runUntilCleanup(t, "metrics", b.GW.RunMetrics)
	var okHits, badHits atomic.Int64
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { okHits.Add(1) }))
	t.Cleanup(ok.Close)
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		badHits.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
	}))
	t.Cleanup(bad.Close)
	d, err := webhook.New(webhook.Config{Store: b.Broker.Store, Attempts: 2, BaseDelay: 5 * time.Millisecond, MaxDelay: 20 * time.Millisecond,
		AckWait: 3 * time.Second, Policy: b.GW.cfg.WebhookPolicy, OnAttempt: b.GW.WebhookAttempt})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, "webhooks", d.Run)

	release := b.Fake.Hold("tiny-a")
	a1 := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"a1"}],"state_webhook_url":"`+ok.URL+`/hook"}`)
	start()
	if err := b.Fake.WaitStarted(testCtx(t, 20*time.Second), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	a2 := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"a2"}],"state_webhook_url":"`+bad.URL+`/hook"}`)
	b1 := jobsSubmit(t, b, `{"model":"tiny-b","messages":[{"role":"user","content":"b1"}]}`, "X-Foreman-Priority", "low")
	c := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"c"}]}`)
	if resp, out := b.request(t, http.MethodDelete, "/jobs/"+c, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("cancel: %d %s", resp.StatusCode, out)
	}
	fams := scrape(t, b)
	for _, want := range []struct {
		labels []string
		n      float64
	}{
		{[]string{"model", "tiny-a:latest", "priority", "normal"}, 2}, // a1 runs, a2 waits
		{[]string{"model", "tiny-b:latest", "priority", "low"}, 1},
	} {
		if got := metricValue(fams, "foreman_queue_depth", want.labels...); got != want.n {
			t.Errorf("foreman_queue_depth%v = %v, want %v", want.labels, got, want.n)
		}
	}
	if got := metricValue(fams, "foreman_target_up"); got != 1 {
		t.Errorf("foreman_target_up = %v", got)
	}

	b.Fake.FailNext(1, ollamatest.FailStatus(http.StatusInternalServerError, "boom")) // a2's call
	release()
	waitJobState(t, b, a1, broker.StateDone)
	waitJobState(t, b, a2, broker.StateFailed)
	waitJobState(t, b, b1, broker.StateDone)

	want := []struct {
		name   string
		labels []string
		n      float64
	}{
		{"foreman_jobs_total", []string{"model", "tiny-a:latest", "state", "done"}, 1},
		{"foreman_jobs_total", []string{"model", "tiny-a:latest", "state", "failed"}, 1},
		{"foreman_jobs_total", []string{"model", "tiny-a:latest", "state", "canceled"}, 1},
		{"foreman_jobs_total", []string{"model", "tiny-b:latest", "state", "done"}, 1},
		{"foreman_job_wait_seconds", []string{"model", "tiny-a:latest", "priority", "normal"}, 2},
		{"foreman_job_wait_seconds", []string{"model", "tiny-b:latest", "priority", "low"}, 1},
		{"foreman_job_run_seconds", []string{"model", "tiny-a:latest"}, 2},
		{"foreman_job_run_seconds", []string{"model", "tiny-b:latest"}, 1},
		{"foreman_model_loads_total", []string{"model", "tiny-a:latest"}, 1},
		{"foreman_model_loads_total", []string{"model", "tiny-b:latest"}, 1},
	}
	eventually(t, 20*time.Second, "metrics and webhook outcomes after the workload", func() bool {
		fams = scrape(t, b)
		var wrong []string
		for _, w := range want {
			if got := metricValue(fams, w.name, w.labels...); got != w.n {
				wrong = append(wrong, fmt.Sprintf("%s%v = %v, want %v", w.name, w.labels, got, w.n))
			}
		}
		// Every attempt to the good receiver is ok; each event to the bad one is tried
		// twice: a retry, then gave_up.
		okN, retryN, gaveN := metricValue(fams, "foreman_webhook_deliveries_total", "outcome", "ok"),
			metricValue(fams, "foreman_webhook_deliveries_total", "outcome", "retry"),
			metricValue(fams, "foreman_webhook_deliveries_total", "outcome", "gave_up")
		hooksSettled := okN >= 3 && okN == float64(okHits.Load()) && gaveN >= 2 && retryN == gaveN && retryN+gaveN == float64(badHits.Load())
		return len(wrong) == 0 && hooksSettled
	})
	if got := metricValue(fams, "foreman_queue_depth", "model", "tiny-a:latest", "priority", "normal"); got != -1 {
		t.Errorf("queue depth of an empty queue still shown: %v", got)
	}
}

// psClient is the target with /api/ps answered by ps.
type psClient struct {
	ollama.Client
	ps *ollama.ProcessResponse
}

func (c *psClient) Ps(context.Context) (*ollama.ProcessResponse, []byte, error) {
	raw, err := json.Marshal(c.ps)
	return c.ps, raw, err
}

// A target whose /api/ps lists one model twice (tiny-a:latest and tiny-a, one model once
// normalized) still gets scraped, with that model's loaded gauge once; and the gauge's
// model label is capped at 100 models as the others are.
func TestMetricsLoadedModelsOncePerLabel(t *testing.T) {
	t.Parallel()
	ps := &ollama.ProcessResponse{Models: []ollama.ProcessModelResponse{{Name: "tiny-a:latest"}, {Name: "tiny-a"}, {Model: "Tiny-A"}}}
	for i := range maxModelLabels + 5 {
		ps.Models = append(ps.Models, ollama.ProcessModelResponse{Name: fmt.Sprintf("many-%03d", i)})
	}
	b := newTestBundle(t, withTarget(func(c ollama.Client) ollama.Client { return &psClient{Client: c, ps: ps} }))
	fams := scrape(t, b)
	if got := metricValue(fams, "foreman_target_loaded_model", "model", "tiny-a:latest"); got != 1 {
		t.Errorf("tiny-a loaded: %v, want 1", got)
	}
	if got := metricValue(fams, "foreman_target_loaded_model", "model", otherModel); got != 1 {
		t.Errorf("models past the cap: %v, want 1 under %q", got, otherModel)
	}
	if n := len(fams["foreman_target_loaded_model"].GetMetric()); n != maxModelLabels+1 {
		t.Errorf("%d loaded model series, want %d and %q", n, maxModelLabels, otherModel)
	}
}

// On a shared NATS each foreman sees every job's events; its job metrics count only what
// it did. A job another foreman canceled is that foreman's to count: summed over the
// foremen, each job counts once.
func TestMetricsCountOnlyThisForemansChanges(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	runUntilCleanup(t, "metrics", b.GW.RunMetrics)
	nc, err := b.Broker.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	other, err := broker.Open(testCtx(t, 30*time.Second), broker.Config{Conn: nc})
	if err != nil {
		t.Fatal(err)
	}
	theirs := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"theirs"}]}`)
	ours := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"ours"}]}`)
	if _, err := other.Cancel(testCtx(t, 10*time.Second), theirs, "canceled by another foreman"); err != nil {
		t.Fatal(err)
	}
	if resp, out := b.request(t, http.MethodDelete, "/jobs/"+ours, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("cancel: %d %s", resp.StatusCode, out)
	}
	// The events come in the order the records were written: once ours is counted, the
	// other foreman's was seen.
	canceled := func() float64 {
		return metricValue(scrape(t, b), "foreman_jobs_total", "model", "tiny-a:latest", "state", "canceled")
	}
	eventually(t, 10*time.Second, "this foreman's cancel counted", func() bool { return canceled() >= 1 })
	if got := canceled(); got != 1 {
		t.Fatalf("foreman_jobs_total{state=canceled} = %v, want 1: another foreman's cancel counted here too", got)
	}
}

// A scrape whose read of the queue fails (the job store does not answer) says so in
// foreman_queue_readable, 0, and leaves the queue's series out: before, they were just
// gone, and an alert on them went quiet when it should fire.
func TestMetricsSayWhenTheQueueCannotBeRead(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	fams := scrape(t, b)
	if got := metricValue(fams, "foreman_queue_readable"); got != 1 {
		t.Fatalf("foreman_queue_readable = %v with the queue readable, want 1", got)
	}
	if got := metricValue(fams, "foreman_queue_jobs"); got != 0 {
		t.Fatalf("foreman_queue_jobs = %v with the queue empty, want 0", got)
	}
	js, err := jetstream.New(b.Broker.Conn)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(context.Background(), broker.QueueStream); err != nil {
		t.Fatal(err)
	}
	fams = scrape(t, b)
	if got := metricValue(fams, "foreman_queue_readable"); got != 0 {
		t.Errorf("foreman_queue_readable = %v with the queue unreadable, want 0", got)
	}
	if got := metricValue(fams, "foreman_queue_jobs"); got != -1 {
		t.Errorf("foreman_queue_jobs = %v with the queue unreadable, want it left out", got)
	}
}
