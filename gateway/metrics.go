package gateway

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// metrics is a Prometheus collector that reads foreman's state at scrape time, so nothing
// on the request or job path pays for it.
type metrics struct {
	s          *Server
	queueDepth *prometheus.Desc
	targetUp   *prometheus.Desc
	queueTotal *prometheus.Desc
	queueRead  *prometheus.Desc
	degraded   *prometheus.Desc
	loaded     *prometheus.Desc
	cutOff     *prometheus.Desc
	peak       *prometheus.Desc
	paused     *prometheus.Desc
	bodies     *prometheus.Desc
	bodyLimit  *prometheus.Desc
	bodyPeak   *prometheus.Desc
}

func newMetricsHandler(s *Server) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(foremanCollectors(s)...)
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

// foremanCollectors are the collectors of foreman's own metrics (foreman_*), those the
// README's table lists (TestREADMENamesTheMetricsServed).
func foremanCollectors(s *Server) []prometheus.Collector {
	return append(s.jobMetrics.collectors(),
		&metrics{
			s:          s,
			queueDepth: prometheus.NewDesc("foreman_queue_depth", "Jobs in the queue (waiting, retrying or running) per model and priority.", []string{"model", "priority"}, nil),
			targetUp:   prometheus.NewDesc("foreman_target_up", "1 while the Ollama target is reachable, 0 while it is not.", nil, nil),
			queueTotal: prometheus.NewDesc("foreman_queue_jobs", "Jobs in the queue, all models.", nil, nil),
			queueRead:  prometheus.NewDesc("foreman_queue_readable", "1 when this scrape read the queue (foreman_queue_jobs and foreman_queue_depth are then shown), 0 when the job store did not answer.", nil, nil),
			degraded:   prometheus.NewDesc("foreman_target_degraded", "1 while the Ollama target is unreachable, no poll of it has ended yet, or it stalled a job (as /healthz says).", nil, nil),
			loaded:     prometheus.NewDesc("foreman_target_loaded_model", "1 for each model loaded on the target (last poll).", []string{"model"}, nil),
			cutOff:     prometheus.NewDesc("foreman_slow_clients_cut_off_total", "Sync clients cut off for reading their answer too slowly (their jobs ran on).", nil, nil),
			peak:       prometheus.NewDesc("foreman_stream_buffer_peak_bytes", "Most bytes of an answer ever held for one slow client.", nil, nil),
			paused:     prometheus.NewDesc("foreman_worker_paused", "1 while the worker takes no job for this reason (the target unreachable or answering \"not now\", the job store refusing writes), else 0.", []string{"reason"}, nil),
			bodies:     prometheus.NewDesc("foreman_request_body_bytes_in_flight", "Bytes of request bodies held now, all requests together (taken from FOREMAN_MAX_BODY_BYTES_IN_FLIGHT).", nil, nil),
			bodyPeak:   prometheus.NewDesc("foreman_request_body_bytes_in_flight_peak", "The most bytes of request bodies ever held at once.", nil, nil),
			bodyLimit:  prometheus.NewDesc("foreman_request_body_bytes_in_flight_limit", "FOREMAN_MAX_BODY_BYTES_IN_FLIGHT: the request body bytes held at once past which a body is refused with 503, unless it is the only one held (a program holds at most half of what the others leave, ADR-0126).", nil, nil),
		},
	)
}

// pauser is a queue view (the worker) that says cheaply whether it is paused.
type pauser interface{ Paused() *broker.Pause }

// pauseShower is a QueueViewer that tells its pause as GET /queue shows it.
type pauseShower interface{ PauseShown() *broker.Pause }

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.queueDepth
	ch <- m.targetUp
	ch <- m.queueTotal
	ch <- m.queueRead
	ch <- m.degraded
	ch <- m.loaded
	ch <- m.cutOff
	ch <- m.peak
	ch <- m.paused
	ch <- m.bodies
	ch <- m.bodyPeak
	ch <- m.bodyLimit
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A queue the store does not answer for shows no depth (an old one would be taken for
	// the queue's now): foreman_queue_readable says so, for an alert to fire on rather
	// than go quiet with the series gone.
	readable := 0.0
	if depth, err := m.s.store.DepthByKey(ctx); err == nil {
		readable = 1
		var total uint64
		type series struct{ model, priority string }
		sum := map[series]uint64{}
		for key, n := range depth {
			total += n
			k, err := broker.ParseQueueKey(key)
			if err != nil {
				continue // no queue foreman makes; the worker removes it
			}
			model, err := broker.ModelFromToken(k.Model)
			if err != nil {
				continue
			}
			sum[series{m.s.models.label(model), string(k.Class)}] += n
		}
		for s, n := range sum {
			ch <- prometheus.MustNewConstMetric(m.queueDepth, prometheus.GaugeValue, float64(n), s.model, s.priority)
		}
		ch <- prometheus.MustNewConstMetric(m.queueTotal, prometheus.GaugeValue, float64(total))
	}
	ch <- prometheus.MustNewConstMetric(m.queueRead, prometheus.GaugeValue, readable)
	// Up only once the target answered a poll of this run: before that it is not known
	// to be, whatever models are remembered for it (ADR-0047). Degraded, as /healthz
	// says, until a poll has ended, and while the worker's last call found it stalled.
	deg, up := 0.0, 0.0
	if snap := m.s.inv.Snapshot(); snap.Degraded || snap.LastPoll.IsZero() ||
		m.s.cfg.TargetHealth != nil && m.s.cfg.TargetHealth() != nil {
		deg = 1
	}
	if m.s.inv.Reachable() {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(m.degraded, prometheus.GaugeValue, deg)
	ch <- prometheus.MustNewConstMetric(m.targetUp, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(m.cutOff, prometheus.CounterValue, float64(m.s.syncs.cutOff.Load()))
	ch <- prometheus.MustNewConstMetric(m.peak, prometheus.GaugeValue, float64(m.s.syncs.peak.Load()))
	ch <- prometheus.MustNewConstMetric(m.bodies, prometheus.GaugeValue, float64(m.s.bodies.used.Load()))
	ch <- prometheus.MustNewConstMetric(m.bodyPeak, prometheus.GaugeValue, float64(m.s.bodies.peak.Load()))
	ch <- prometheus.MustNewConstMetric(m.bodyLimit, prometheus.GaugeValue, float64(m.s.bodies.limit))
	if q, ok := m.s.cfg.Queue.(pauseShower); ok {
		p := q.PauseShown()
		for _, reason := range []string{broker.PauseTargetUnreachable, broker.PauseTargetBusy, broker.PauseStoreRefusesWrites} {
			on := 0.0
			if p != nil && p.Reason == reason {
				on = 1
			}
			ch <- prometheus.MustNewConstMetric(m.paused, prometheus.GaugeValue, on, reason)
		}
	}
	// /api/ps may list one model under two names (tiny-a:latest and tiny-a) and past the
	// cap many models share "other": a label given twice would fail the whole scrape.
	labels := map[string]bool{}
	for _, model := range m.s.inv.Loaded() {
		label := m.s.models.label(model)
		if labels[label] {
			continue
		}
		labels[label] = true
		ch <- prometheus.MustNewConstMetric(m.loaded, prometheus.GaugeValue, 1, label)
	}
}
