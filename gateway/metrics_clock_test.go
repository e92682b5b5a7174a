package gateway

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// A job's wait and run are differences of times stamped by foremen's clocks (on a shared
// NATS the submitting foreman's and the running one's; on one host, a clock stepped back
// between the two): one behind the other makes a negative span, which a histogram must
// not take (its sum would go down). Such a span counts as 0.
func TestJobMetricsTakeNoNegativeSpans(t *testing.T) {
	m := newJobMetrics(&modelLabels{}, func(*broker.Job) bool { return true }, func() time.Duration { return time.Hour })
	created := time.Now()
	started := created.Add(-time.Minute) // the runner's clock a minute behind the submitter's
	finished := started.Add(-time.Second)
	j := &broker.Job{ID: broker.NewID(), Model: "m", State: broker.StateWorking, Attempt: 1, CreatedAt: created, StartedAt: &started}
	m.observe(j)
	done := *j
	done.State, done.FinishedAt = broker.StateDone, &finished
	m.observe(&done)
	for name, o := range map[string]prometheus.Observer{
		"wait": m.wait.WithLabelValues("m:latest", "normal"),
		"run":  m.run.WithLabelValues("m:latest"),
	} {
		var d dto.Metric
		if err := o.(prometheus.Metric).Write(&d); err != nil {
			t.Fatal(err)
		}
		if h := d.GetHistogram(); h.GetSampleCount() != 1 || h.GetSampleSum() != 0 {
			t.Errorf("%s histogram: %d samples, sum %v after a span of a clock behind; want 1 sample of 0", name, h.GetSampleCount(), h.GetSampleSum())
		}
	}
}
