package worker

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// TargetStall reports a stalled target for /healthz: the last job attempt that ended was
// aborted because the target fell silent, e.g. "stalled: no response for 5m0s on job <id>".
// It is nil again once a later attempt gets a complete answer (or an HTTP error) from the
// target: the inventory's polls cannot tell, as Ollama's /api/tags and /api/ps answer
// while one of its runners hangs. A stall of a target that answered no poll either
// (ADR-0049) is over, too, once a poll is answered after it.
func (w *Worker) TargetStall() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stall == "" {
		return nil
	}
	if w.stallSilent && w.cfg.Inventory != nil {
		if snap := w.cfg.Inventory.Snapshot(); snap.DownSince.IsZero() && snap.LastPoll.After(w.stallAt) {
			w.log.Info("target answers again", "after", w.stall)
			w.stall, w.stallSilent = "", false
			return nil
		}
	}
	return errors.New(w.stall)
}

func (w *Worker) targetStalled(jobID string, se interface{ Reason() string }) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stall, w.stallAt = "stalled: "+se.Reason()+" on job "+jobID, time.Now()
	_, w.stallSilent = se.(*silentTargetError)
}

func (w *Worker) targetAnswered() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stall != "" {
		w.log.Info("target answers again", "after", w.stall)
	}
	w.stall, w.stallSilent = "", false
}

// silentTargetError aborts an attempt that has had no byte of answer (or no more of it)
// while the target answered none of the inventory's polls for Config.TargetSilence:
// Ollama hangs as a whole (ADR-0049). The attempt counts as a stall: the job is retried,
// on another Mac when one has its model, and the worker pauses until its target answers.
type silentTargetError struct {
	since time.Time // the start of the first unanswered poll in a row
	limit time.Duration
	began bool // the answer had begun
}

func (e *silentTargetError) Error() string {
	return "ollama stalled: " + e.Reason()
}

// Reason is the error without its prefix, as the worker's /healthz stall says it.
func (e *silentTargetError) Reason() string {
	what := "no answer byte"
	if e.began {
		what = "no more of the answer"
	}
	return fmt.Sprintf("%s for %s, and no answer to the target's polls since %s (the limit is FOREMAN_SYNC_OUTAGE_WAIT)",
		what, e.limit, e.since.UTC().Format(time.RFC3339))
}

// silenceLoop gives up the running attempt when silentAttempt says so, looking at every
// tick until done is closed (the worker's loop has ended: through a stop, the job it
// lets finish is watched too) or ctx ends (which aborts a running job anyway).
func (w *Worker) silenceLoop(ctx context.Context, done <-chan struct{}) {
	t := time.NewTicker(silenceTick(w.cfg.TargetSilence))
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case now := <-t.C:
			if run, abort, err := w.silentAttempt(now); err != nil {
				w.log.Warn("target silent; attempt given up", "job_id", run.id, "model", run.model, "err", err)
				abort(err)
			}
		}
	}
}

// silenceTick is how often silenceLoop looks: a quarter of the limit, at most 5 s.
func silenceTick(limit time.Duration) time.Duration {
	return min(max(limit/4, time.Millisecond), 5*time.Second)
}

// silentAttempt reports the running attempt to give up at now (its job, and what aborts
// it), and why: it has had no
// byte of answer for TargetSilence (since its start, or its last byte), and the
// inventory's polls have gone unanswered (refused, reset or no answer, not an error
// status) as long.
func (w *Worker) silentAttempt(now time.Time) (*runningJob, context.CancelCauseFunc, error) {
	w.mu.Lock()
	run, abort := w.running, w.abort
	w.mu.Unlock()
	if run == nil || abort == nil || run.called.Load() {
		return nil, nil, nil // idle, or the call has returned and the attempt is being concluded
	}
	down := w.cfg.Inventory.Snapshot().DownSince
	if down.IsZero() || now.Sub(later(down, later(run.started, run.lastByteAt()))) < w.cfg.TargetSilence {
		return nil, nil, nil
	}
	return run, abort, &silentTargetError{since: down, limit: w.cfg.TargetSilence, began: !run.answeredAt().IsZero()}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
