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
// target. The inventory's polls cannot tell: Ollama's /api/tags and /api/ps answer while
// one of its runners hangs.
func (w *Worker) TargetStall() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stall == "" {
		return nil
	}
	return errors.New(w.stall)
}

func (w *Worker) targetStalled(jobID string, se interface{ Reason() string }) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stall = "stalled: " + se.Reason() + " on job " + jobID
}

func (w *Worker) targetAnswered() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stall != "" {
		w.log.Info("target answers again", "after", w.stall)
	}
	w.stall = ""
}

// silentTargetError aborts an attempt that has had no byte of answer while the target
// answered none of the inventory's polls for Config.TargetSilence: Ollama hangs as a
// whole (ADR-0049). The attempt counts as a stall: the job is retried, on another Mac
// when one has its model, and the worker pauses until its target answers.
type silentTargetError struct {
	since time.Time // the start of the first unanswered poll in a row
	limit time.Duration
}

func (e *silentTargetError) Error() string {
	return "ollama stalled: " + e.Reason()
}

// Reason is the error without its prefix, as the worker's /healthz stall says it.
func (e *silentTargetError) Reason() string {
	return fmt.Sprintf("no answer byte, and no answer to the target's polls since %s (for %s: the limit FOREMAN_SYNC_OUTAGE_WAIT)",
		e.since.UTC().Format(time.RFC3339), e.limit)
}

// silenceLoop gives up the running attempt when silentAttempt says so, looking at every
// tick until the worker stops.
func (w *Worker) silenceLoop(ctx context.Context) {
	t := time.NewTicker(silenceTick(w.cfg.TargetSilence))
	defer t.Stop()
	for {
		select {
		case <-w.stopping:
			return
		case <-ctx.Done():
			return
		case now := <-t.C:
			if abort, err := w.silentAttempt(now); err != nil {
				w.log.Warn("target silent; attempt given up", "err", err)
				abort(err)
			}
		}
	}
}

// silenceTick is how often silenceLoop looks: a quarter of the limit, at most 5 s.
func silenceTick(limit time.Duration) time.Duration {
	return min(max(limit/4, time.Millisecond), 5*time.Second)
}

// silentAttempt reports the running attempt to give up at now, and why: it has had no
// byte of answer, and the inventory's polls have gone unanswered (refused, reset or no
// answer, not an error status) for TargetSilence, counted from the attempt's start at
// the earliest.
func (w *Worker) silentAttempt(now time.Time) (context.CancelCauseFunc, error) {
	w.mu.Lock()
	run, abort := w.running, w.abort
	w.mu.Unlock()
	if run == nil || abort == nil || !run.answeredAt().IsZero() {
		return nil, nil
	}
	down := w.cfg.Inventory.Snapshot().DownSince
	if down.IsZero() || now.Sub(later(down, run.started)) < w.cfg.TargetSilence {
		return nil, nil
	}
	return abort, &silentTargetError{since: down, limit: w.cfg.TargetSilence}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
