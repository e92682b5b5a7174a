package worker

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// parkedLease is a job's last JetStream delivery kept by the worker because its requeue
// found the queue full (ADR-0100): held in progress until due, then requeued when the
// queue has room, else run again from this very delivery.
type parkedLease struct {
	d       *broker.Lease
	due     time.Time
	release func() // lets go of the delivery's keeper
}

// park keeps delivery d, its job's last, whose requeue the queue's bound refused
// (broker.ErrQueueFull): its old message still counts against FOREMAN_MAX_QUEUE, so in a
// full queue the new copy cannot be stored beside it. NAKed, the last delivery would never
// come back and the delivery limit's advisory would fail a job with its attempts unspent.
// Kept in progress instead, it comes back to the Run loop after delay, as a NAK with that
// delay would have brought it: requeued if the queue has room then, else run from here.
func (w *Worker) park(d *broker.Lease, delay time.Duration, log *slog.Logger) {
	release := w.keepInProgress(d, log) // taken before the handler lets go: no gap in the ticks
	due := time.Now().Add(delay)
	w.mu.Lock()
	w.parked = append(w.parked, parkedLease{d: d, due: due, release: release})
	w.retries = append(w.retries, due) // the idle loop wakes for it
	w.mu.Unlock()
	log.Warn("queue full: the job's last delivery is kept, to be requeued or run again from it", "delay", delay)
}

// dueParked takes the first parked delivery due at now, if any.
func (w *Worker) dueParked(now time.Time) (parkedLease, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, p := range w.parked {
		if !p.due.After(now) {
			w.parked = append(w.parked[:i:i], w.parked[i+1:]...)
			return p, true
		}
	}
	return parkedLease{}, false
}

// runParked takes a parked delivery up again: requeued when the queue has room now (its
// deliveries counted anew, at its queue's end), else handled here as a delivery fresh
// from its consumer, which may park it again.
func (w *Worker) runParked(ctx context.Context, p parkedLease) {
	defer p.release() // after handle took its own hold of the keeper
	log := w.log.With("job_id", p.d.JobID, "model", p.d.Model)
	bctx, cancel := w.storeCtx(ctx)
	err := w.requeue(bctx, p.d)
	cancel()
	if err == nil {
		log.Info("job requeued: its queue had room again")
		return
	}
	if !errors.Is(err, broker.ErrQueueFull) {
		log.Warn("requeue a kept last delivery; it runs from it", "err", err)
	}
	w.handle(ctx, p.d, nil, nil)
}

// unparkAll hands back the parked deliveries as the worker stops, as a stop hands back
// a running job (giveBack: requeued if the queue has room now, else NAKed).
func (w *Worker) unparkAll() {
	w.mu.Lock()
	parked := w.parked
	w.parked = nil
	w.mu.Unlock()
	for _, p := range parked {
		log := w.log.With("job_id", p.d.JobID, "model", p.d.Model)
		ctx, cancel := w.storeCtx(context.Background())
		w.giveBack(ctx, p.d, log)
		cancel()
		p.release()
	}
}
