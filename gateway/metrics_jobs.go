package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// maxModelLabels bounds the model label values of the metrics: past it, further models
// count as "other", so a caller naming endless models cannot grow the series without
// bound.
const maxModelLabels = 100

// otherModel is the model label of models past maxModelLabels.
const otherModel = "other"

// modelLabels hands out the bounded model label values.
type modelLabels struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (l *modelLabels) label(model string) string {
	model = ollama.NormalizeModel(model)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen[model] {
		return model
	}
	if len(l.seen) >= maxModelLabels {
		return otherModel
	}
	if l.seen == nil {
		l.seen = map[string]bool{}
	}
	l.seen[model] = true
	return model
}

// jobMetrics are the counters and histograms of the jobs' lives, fed by the jobs' state
// events (the worker's starts and ends, a cancel of a queued job, an expiry) and by the
// webhook dispatcher. Only the changes this foreman wrote count (mine): on a shared NATS
// every foreman sees every job's events, and summed over the foremen each job would
// count once per foreman.
type jobMetrics struct {
	mine     func(*broker.Job) bool
	models   *modelLabels
	wait     *prometheus.HistogramVec
	run      *prometheus.HistogramVec
	jobs     *prometheus.CounterVec
	loads    *prometheus.CounterVec
	webhooks *prometheus.CounterVec
	refused  *prometheus.CounterVec

	// ttl is the job TTL in force (Store.JobTTL): no event of a job comes later than
	// that after its last one, as its record is gone by then. now is the clock (tests
	// move it on).
	ttl func() time.Duration
	now func() time.Time

	// seen is, per job, what was counted already: prev the jobs last met in the span of
	// a job TTL before since, seen those met since. A job met in neither for a job TTL
	// is forgotten at the next event (rotateLocked), so the jobs of a day are not held
	// for the process's life (ADR-0145).
	mu    sync.Mutex
	seen  map[string]jobSeen
	prev  map[string]jobSeen
	since time.Time
}

// jobSeen is what was counted of one job: events repeat a state (a cancel request
// written while it loads), and a job starts once per attempt.
type jobSeen struct {
	waited  bool
	loading int // the attempt seen loading: its load counts once its model answers
	loadFor int // the attempt whose load was counted
	ended   bool
}

// maxSeenJobs bounds the jobs jobMetrics knows (seen and prev together); past it the
// older half is dropped (a record rewritten after that could count twice, which only a
// very busy foreman meets).
const maxSeenJobs = 50_000

func newJobMetrics(models *modelLabels, mine func(*broker.Job) bool, ttl func() time.Duration) *jobMetrics {
	return &jobMetrics{
		mine:   mine,
		models: models,
		ttl:    ttl,
		now:    time.Now,
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "foreman_job_wait_seconds",
			Help:    "Time jobs waited in the queue before they started (first attempt), per model and priority.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600},
		}, []string{"model", "priority"}),
		run: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "foreman_job_run_seconds",
			Help:    "Time from a job's start to its end (loads included), per model.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800},
		}, []string{"model"}),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "foreman_jobs_total",
			Help: "Jobs this foreman ended (its worker, a cancel or an expiry it wrote), per model and end state (done, failed, canceled).",
		}, []string{"model", "state"}),
		loads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "foreman_model_loads_total",
			Help: "Model loads this foreman's worker caused: attempts that started with their model not loaded (a swap) and got its answer (working, or done).",
		}, []string{"model"}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "foreman_webhook_deliveries_total",
			Help: "Webhook delivery attempts by outcome: ok, retry, gave_up.",
		}, []string{"outcome"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "foreman_requests_refused_total",
			Help: "Requests refused by design, per reason: queue_full (FOREMAN_MAX_QUEUE), program_limit (FOREMAN_MAX_QUEUE_PER_PROGRAM), body_budget (FOREMAN_MAX_BODY_BYTES_IN_FLIGHT, or a program's share of it, ADR-0126), artifact_downloads (artifact bodies being sent at once over their cap, ADR-0065, or a program's share of them, ADR-0126), host_not_allowed and origin_not_allowed (the browser policy, FOREMAN_ORIGINS), connections (HTTP connections at once over FOREMAN_MAX_QUEUE + 1024, ADR-0082), connections_per_address (one remote address's connections over half of those, ADR-0088), unauthorized (401: a missing or wrong bearer token), not_model_admin (403: a change to the models by a program FOREMAN_MODEL_ADMINS does not name, ADR-0124).",
		}, []string{"reason"}),
		seen: map[string]jobSeen{},
	}
}

func (m *jobMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.wait, m.run, m.jobs, m.loads, m.webhooks, m.refused}
}

// observe counts what job event j tells for the first time, if this foreman wrote it.
func (m *jobMetrics) observe(j *broker.Job) {
	if !m.mine(j) {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rotateLocked()
	s, ok := m.seen[j.ID]
	if !ok {
		s = m.prev[j.ID]
	}
	model := m.models.label(j.Model)
	switch {
	case j.State == broker.StateLoading || j.State == broker.StateWorking:
		if !s.waited && j.StartedAt != nil && j.Attempt == 1 {
			s.waited = true
			m.wait.WithLabelValues(model, string(j.Priority.OrNormal())).Observe(max(j.StartedAt.Sub(j.CreatedAt), 0).Seconds()) // two foremen's clocks
		}
		if j.State == broker.StateLoading {
			s.loading = j.Attempt
		} else {
			m.loadedLocked(&s, j, model)
		}
	case j.State.Terminal():
		if s.ended {
			return
		}
		s.ended = true
		if j.State == broker.StateDone {
			m.loadedLocked(&s, j, model)
		}
		m.jobs.WithLabelValues(model, string(j.State)).Inc()
		if j.StartedAt != nil && j.FinishedAt != nil {
			m.run.WithLabelValues(model).Observe(max(j.FinishedAt.Sub(*j.StartedAt), 0).Seconds())
		}
	default:
		return
	}
	if len(m.seen) >= maxSeenJobs/2 {
		m.prev, m.seen, m.since = m.seen, nil, m.now()
	}
	if m.seen == nil {
		m.seen = map[string]jobSeen{}
	}
	m.seen[j.ID] = s
	delete(m.prev, j.ID)
}

// rotateLocked forgets the jobs met last a job TTL ago or longer: seen becomes prev once
// it spans a job TTL, and both go once the newest of them is that old. The maps are
// dropped, not cleared, so the room a busy day took is given back too. m.mu must be held.
func (m *jobMetrics) rotateLocked() {
	now, ttl := m.now(), m.ttl()
	switch age := now.Sub(m.since); {
	case age >= 2*ttl:
		m.prev, m.seen, m.since = nil, nil, now
	case age >= ttl:
		m.prev, m.seen, m.since = m.seen, nil, now
	}
}

// known is how many jobs m knows (tests).
func (m *jobMetrics) known() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.seen) + len(m.prev)
}

// loadedLocked counts the load of j's attempt, seen loading, once its model answered:
// an attempt the target failed before any answer (a model it lacks, a load that failed,
// a target gone) loaded nothing. m.mu must be held.
func (m *jobMetrics) loadedLocked(s *jobSeen, j *broker.Job, model string) {
	if s.loading == j.Attempt && j.Attempt > 0 && s.loadFor != j.Attempt {
		s.loadFor = j.Attempt
		m.loads.WithLabelValues(model).Inc()
	}
}

// WebhookAttempt counts a webhook delivery attempt's outcome ("ok", "retry", "gave_up");
// give it to the dispatcher as webhook.Config.OnAttempt.
func (s *Server) WebhookAttempt(outcome string) {
	switch outcome {
	case "ok", "retry", "gave_up":
		s.jobMetrics.webhooks.WithLabelValues(outcome).Inc()
	}
}

// ConnectionRefused counts a connection the HTTP listener refused: reason "connections"
// over its cap of connections at once (ADR-0082), "connections_per_address" over its
// remote address's share of them (ADR-0088).
func (s *Server) ConnectionRefused(reason string) {
	switch reason {
	case "connections", "connections_per_address":
		s.jobMetrics.refused.WithLabelValues(reason).Inc()
	}
}

// RunMetrics follows every job's state events for the job metrics until ctx ends.
func (s *Server) RunMetrics(ctx context.Context) error {
	stop, err := s.store.OnJobEvents(s.jobMetrics.observe)
	if err != nil {
		return err
	}
	defer stop()
	<-ctx.Done()
	return nil
}
