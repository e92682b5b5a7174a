package gateway

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
)

// QueueViewer orders the waiting jobs the way the worker will run them (the worker's
// own pick rule), with positions and expected start times.
type QueueViewer interface {
	// QueueView returns a view computed no earlier than notBefore (a cached one may be
	// returned when it is recent enough).
	QueueView(ctx context.Context, notBefore time.Time) (*broker.QueueView, error)
}

// Limits of GET /queue's list.
const (
	defaultQueueLimit = 100
	maxQueueLimit     = 100_000
)

// queueBody is the answer of GET /queue.
type queueBody struct {
	Running *jobView           `json:"running"`
	Loaded  []string           `json:"loaded"`
	Queued  []broker.QueuedJob `json:"queued"`
	// RunningElsewhere are the jobs other foremen's workers run from the shared queue.
	RunningElsewhere []broker.ElsewhereJob `json:"running_elsewhere"`
	// WaitingElsewhere are the waiting jobs this foreman's worker leaves to other Macs
	// (their model is not on its Mac, or its Mac is down and another has it), oldest
	// first, the first ?limit=, with no position or ETA: not counted in Total.
	WaitingElsewhere []broker.QueuedJob `json:"waiting_elsewhere"`
	// Paused says why the worker takes no job now; null while it runs.
	Paused *broker.Pause `json:"paused"`
	// Total is the number of waiting jobs this foreman's worker runs, of which Queued
	// shows the first ?limit=.
	Total int `json:"total"`
	// Depth is the waiting jobs per model (normalized: tiny-a and tiny-a:latest are one),
	// over the whole queue: those of Queued and WaitingElsewhere, not only those shown.
	Depth map[string]int `json:"depth"`
	// Targets are this foreman's target and those of the other live foremen (ADR-0029).
	Targets []targetView `json:"targets"`
	// Now is foreman's time of the answer, on the clock of the ETAs and the queue's
	// created_at (the NATS server's, ADR-0060): a client whose clock is off takes its
	// spans to them (an ETA's "in 12s", a job's age) against it, not against its own.
	Now time.Time `json:"now"`
}

// handleQueue answers GET /queue?limit=: what runs, what is loaded, and the waiting jobs
// in the order foreman expects to run them.
func (s *Server) handleQueue(w http.ResponseWriter, r *http.Request) {
	limit := defaultQueueLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxQueueLimit {
			s.writeError(w, r, badRequest("limit: must be a number from 1 to "+strconv.Itoa(maxQueueLimit)))
			return
		}
		limit = n
	}
	if s.cfg.Queue == nil {
		s.writeError(w, r, refuse(ErrUnavailable, "queue view unavailable: no worker runs in this foreman"))
		return
	}
	v, err := s.cfg.Queue.QueueView(r.Context(), time.Time{})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	targets, _ := s.targetViews(r.Context()) // the own target at least, should the read of the others fail
	body := queueBody{Loaded: v.Loaded, Queued: v.Queued[:min(limit, len(v.Queued))], Total: len(v.Queued), Depth: v.Depth(),
		Paused: s.pauseShown(v.Paused), Targets: targets, Now: s.store.ServerNow().UTC()}
	body.WaitingElsewhere = v.WaitingElsewhere[:min(limit, len(v.WaitingElsewhere))]
	if body.WaitingElsewhere == nil {
		body.WaitingElsewhere = []broker.QueuedJob{}
	}
	if body.Loaded == nil {
		body.Loaded = []string{}
	}
	body.RunningElsewhere = v.Elsewhere
	if body.RunningElsewhere == nil {
		body.RunningElsewhere = []broker.ElsewhereJob{}
	}
	if v.Running != "" {
		if j, _, err := s.store.Get(r.Context(), v.Running); err == nil {
			jv := s.jobView(r.Context(), j, false)
			body.Running = &jv
		}
	}
	writeJSON(w, http.StatusOK, body)
}

// pauseShown is p as GET /queue shows it: a pause for a store with a fault that only a
// restart ends says so, since it would not end by itself. The worker marks its pause so
// from the writes and probes it failed (steady while a fault check hangs, which leaves
// the store's flag unset); the flag read here says so at once for a fault found since
// the worker's last probe. p itself is shared (a cached view holds it) and stays as it
// is.
func (s *Server) pauseShown(p *broker.Pause) *broker.Pause {
	if p == nil || p.RestartNeeded || p.Reason != broker.PauseStoreRefusesWrites || !broker.NeedsRestart(s.store.WriteFault()) {
		return p
	}
	shown := *p
	shown.RestartNeeded = true
	return &shown
}

// waits reports whether a job in state st waits for its turn: queued, or retrying (in a
// back-off between attempts, still in the queue).
func waits(st broker.State) bool { return st == broker.StateQueued || st == broker.StateRetrying }

// freshFor is how long after a job's creation a view that lacks it is computed again
// for it: its queue message may have been published after the cached view.
const freshFor = time.Second

// logQueueViewFailure warns that the queue view for v's GET failed: once per
// failurelog.Every for the same error, counting those not logged ("repeats"), the others
// at debug (a client polling its job through a store's hiccup would write a warning a
// poll); nothing when the caller hung up, which ended the view itself.
func (s *Server) logQueueViewFailure(ctx context.Context, v *jobView, err error) {
	if ctx.Err() != nil {
		return
	}
	args := []any{"job_id", v.ID, "model", v.Model, "err", err}
	ok, repeats := s.failures.Admit(failurelog.Key("queue view", err))
	if !ok {
		s.log.Debug("queue view", args...)
		return
	}
	if repeats > 0 {
		args = append(args, "repeats", repeats)
	}
	s.log.Warn("queue view", args...)
}

// addPosition fills in the queue position and ETA of a waiting job, or marks one this
// foreman's worker leaves to other Macs (no position here). A young job the view
// does not hold yet (published after it) gets a view computed now; one it still does
// not hold (just picked, or its worker runs elsewhere) gets neither. Only young jobs
// force a view, so polling old ones costs no computation beyond the cached one.
func (s *Server) addPosition(ctx context.Context, v *jobView, asked time.Time) {
	if s.cfg.Queue == nil || !waits(v.State) {
		return
	}
	for _, notBefore := range []time.Time{{}, asked} {
		qv, err := s.cfg.Queue.QueueView(ctx, notBefore)
		if err != nil {
			s.logQueueViewFailure(ctx, v, err)
			return
		}
		if q, elsewhere, ok := qv.Find(v.ID); ok {
			if elsewhere {
				v.WaitingElsewhere = true
				return
			}
			pos, eta := q.QueuePosition, q.ETA
			v.QueuePosition, v.ETA, v.LeftElsewhere = &pos, &eta, q.LeftElsewhere
			return
		}
		if !qv.At.Before(asked) || !qv.At.Before(v.CreatedAt.Add(freshFor)) {
			return
		}
	}
}
