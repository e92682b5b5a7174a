package worker

import (
	"context"
	"errors"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// heldOff is a job whose attempt this worker gave up for its target's silence, left to
// another Mac while one offers its model (ADR-0066).
type heldOff struct {
	token   string    // the job's queue: the worker takes none of its jobs meanwhile
	attempt int       // the attempt given up: a later one was started elsewhere
	until   time.Time // the hold-off's end: the Mac takes the job again after it
}

// waitsFor reports whether j, the held job's record, still waits after the attempt given
// up here: queued or retrying, at that attempt, and no attempt begun since. One begun
// since is another Mac's: the job went there, and is no longer this worker's to leave.
// That attempt may have been given back uncounted (ADR-0086, ADR-0089), which puts
// Attempt back where it was here; RunnerAttempt still tells.
func (h heldOff) waitsFor(j *broker.Job) bool {
	waiting := j.State == broker.StateQueued || j.State == broker.StateRetrying
	return waiting && j.Attempt == h.attempt && j.RunnerAttempt <= h.attempt
}

// holdReadTimeout bounds each look a pick takes at a held job: whether another Mac still
// offers its model (Config.Elsewhere), and its record.
const holdReadTimeout = 5 * time.Second

// targetFault reports a failed attempt that says the Mac, not the job, is at fault: no
// byte of answer for a limit (a stall, ADR-0026), or none while the target answered no
// poll either (ADR-0049). A refused or reset connection, or a proxy's 502 or 504, is not
// counted: the target is not there, and the worker waits for it before it takes a job.
func targetFault(cause error) bool {
	var stall *ollama.StallError
	var silent *silentTargetError
	return errors.As(cause, &stall) || errors.As(cause, &silent)
}

// holdOff records, for a job being put back after attempt j.Attempt failed with cause,
// that this worker leaves it to another Mac for Config.MaxWait, and reports whether it
// does: only for a target's fault, on a shared NATS (never on a store of its own), and
// while another live foreman's reachable target lists the model (Config.Elsewhere).
func (w *Worker) holdOff(ctx context.Context, d *broker.Lease, j *broker.Job, cause error) bool {
	if w.cfg.Elsewhere == nil || w.store.Config().Exclusive || !targetFault(cause) || !w.offered(ctx, ollama.NormalizeModel(j.Model)) {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.held == nil {
		w.held = map[string]heldOff{}
	}
	w.held[d.JobID] = heldOff{token: d.Token, attempt: j.Attempt, until: time.Now().Add(w.cfg.MaxWait)}
	return true
}

// holding reports whether the worker leaves any job to another Mac now or did lately
// (an entry not yet dropped).
func (w *Worker) holding() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.held) > 0
}

// leftElsewhere reports whether queue token holds a job this worker left to another Mac
// (holdOff) that still waits for one: its hold-off has not run out, another Mac still
// offers the model, and the job's record says it is queued or retrying after the attempt
// given up here, no other attempt begun since (heldOff.waitsFor). The worker takes no job
// of that queue meanwhile: its consumer would deliver that job first once its back-off
// ends. A hold that no longer stands is dropped.
func (w *Worker) leftElsewhere(ctx context.Context, token string) bool {
	w.mu.Lock()
	if len(w.held) == 0 {
		w.mu.Unlock()
		return false
	}
	now := time.Now()
	var ids []string
	for id, h := range w.held {
		switch {
		case !now.Before(h.until):
			delete(w.held, id)
		case h.token == token:
			ids = append(ids, id)
		}
	}
	w.mu.Unlock()
	for _, id := range ids {
		if w.stillHeld(ctx, token, id) {
			return true
		}
		w.mu.Lock()
		delete(w.held, id)
		w.mu.Unlock()
	}
	return false
}

// stillHeld reports whether held job id of queue token still waits to be taken by
// another Mac. A record that cannot be read keeps the hold: it runs out by itself.
func (w *Worker) stillHeld(ctx context.Context, token, id string) bool {
	w.mu.Lock()
	h := w.held[id]
	w.mu.Unlock()
	k, err := broker.ParseQueueKey(token)
	if err != nil {
		return false
	}
	model, err := broker.ModelFromToken(k.Model)
	if err != nil || !w.offered(ctx, model) {
		return false
	}
	// A pick waits for this read: bounded, and ended by a stop.
	rctx, cancel := context.WithTimeout(ctx, holdReadTimeout)
	defer cancel()
	rctx, unstop := w.untilStop(rctx)
	defer unstop()
	j, _, err := w.store.Get(rctx, id)
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return false
	case err != nil:
		return true
	}
	return h.waitsFor(j)
}

// offered asks Config.Elsewhere whether another Mac offers model, for at most
// holdReadTimeout and until a stop: a pick (or a give-up) waits for the answer, which
// reads the targets and their foremen's presence, and a sick cluster would hold it for
// as long as those reads take. No answer in time is no: the job runs here, as it does
// when the targets cannot be read.
func (w *Worker) offered(ctx context.Context, model string) bool {
	ctx, cancel := context.WithTimeout(ctx, holdReadTimeout)
	defer cancel()
	ctx, unstop := w.untilStop(ctx)
	defer unstop()
	return w.cfg.Elsewhere(ctx, model) && ctx.Err() == nil
}
