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
	// waits counts the dues at which the queue still had no room and the job was not to
	// run here (runParked): the wait for room grows with it, as a retry's back-off does.
	waits int
}

// park keeps delivery d, its job's last, whose requeue the queue's bound refused
// (broker.ErrQueueFull): its old message still counts against FOREMAN_MAX_QUEUE, so in a
// full queue the new copy cannot be stored beside it. NAKed, the last delivery would never
// come back and the delivery limit's advisory would fail a job with its attempts unspent.
// Kept in progress instead, it comes back to the Run loop after delay, as a NAK with that
// delay would have brought it: requeued if the queue has room then, else run from here.
// So is a delivery whose message JetStream drops at the job TTL before a NAK's delay ends
// (putBack): NAKed, it would leave its job nowhere.
func (w *Worker) park(d *broker.Lease, delay time.Duration, log *slog.Logger) {
	if w.keepParked(parkedLease{d: d}, delay, log) {
		log.Warn("queue full: the job's delivery is kept, to be requeued or run again from it", "delay", delay)
	}
}

// keepParked holds parked delivery p (its keeper taken anew) until delay from now, and
// reports whether it did. Once the stopping worker has handed back its kept deliveries
// (unparkAll: a park in the background, a stored end's), p is handed back at once.
func (w *Worker) keepParked(p parkedLease, delay time.Duration, log *slog.Logger) bool {
	p.release = w.keepInProgress(p.d, log) // taken before the caller lets go: no gap in the ticks
	p.due = time.Now().Add(delay)
	w.mu.Lock()
	if w.unparked {
		w.mu.Unlock()
		ctx, cancel := w.storeCtx(context.Background())
		w.giveBack(ctx, p.d, log)
		cancel()
		p.release()
		return false
	}
	w.parked = append(w.parked, p)
	w.mu.Unlock()
	w.noteRetry(p.due) // the idle loop wakes for it
	return true
}

// dueParked takes the first parked delivery due at now, if any. It is still kept
// (takenUp, isParked) until runParked keeps it again or hands it to handle: its record
// says retrying while its due's requeue is under way, and the expiry must not take it
// for a job waiting in the queue (ADR-0123).
func (w *Worker) dueParked(now time.Time) (parkedLease, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, p := range w.parked {
		if !p.due.After(now) {
			w.parked = append(w.parked[:i:i], w.parked[i+1:]...)
			w.takenUp = p.d.JobID
			return p, true
		}
	}
	return parkedLease{}, false
}

// takenUpDone ends dueParked's takenUp: the delivery is kept again (parked), settled, or
// about to be handled as a fresh delivery.
func (w *Worker) takenUpDone() {
	w.mu.Lock()
	w.takenUp = ""
	w.mu.Unlock()
}

// runParked takes a parked delivery up again: requeued when the queue has room now (its
// deliveries counted anew, at its queue's end), else handled here as a delivery fresh
// from its consumer, which may park it again. A job whose queue this worker does not run
// now (runs: its model left this Mac, or the job is left to another Mac, ADR-0066) is
// not run here: run, it would be called again on a target that lacks its model, or spend
// its attempts on the Mac it was given up on. It stays kept, its requeue tried again at
// each due, for a Mac that runs it once the queue has room, or run here once this Mac
// runs its queue again.
func (w *Worker) runParked(ctx context.Context, p parkedLease) {
	if hook := w.cfg.afterParked; hook != nil {
		defer func() { hook(p.d.JobID, w.isParked(p.d.JobID)) }()
	}
	defer p.release() // after handle took its own hold of the keeper
	defer w.takenUpDone()
	log := w.log.With("job_id", p.d.JobID, "model", p.d.Model)
	bctx, cancel := w.storeCtx(ctx)
	err := w.requeue(bctx, p.d)
	cancel()
	if err == nil {
		log.Info("job requeued: its queue had room again")
		return
	}
	if errors.Is(err, broker.ErrTerminal) {
		// Canceled while kept: its record stays as the cancel wrote it, and no copy of it
		// goes back to the queue.
		w.dropEnded(ctx, p.d, log)
		return
	}
	// A requeue the store refused for now (a blip, a leader election) is no reason to run
	// here a job this Mac does not run: it waits kept as for a full queue, its requeue
	// tried again at the next due.
	wait := errors.Is(err, broker.ErrQueueFull) || broker.Transient(err)
	if wait && !w.isStopping(ctx) && !w.runs(ctx, p.d.Token) && w.waitsStill(ctx, p.d.JobID) {
		p.waits++
		delay := w.cfg.retryDelay(p.waits)
		w.keepParked(p, delay, log) // before the deferred release: no gap in the ticks
		if errors.Is(err, broker.ErrQueueFull) {
			log.Info("queue full: the kept job waits for room, for a Mac that runs it", "delay", delay)
		} else {
			log.Warn("requeue a kept last delivery; it waits, for a Mac that runs it", "err", err, "delay", delay)
		}
		return
	}
	if !errors.Is(err, broker.ErrQueueFull) {
		log.Warn("requeue a kept last delivery; it runs from it", "err", err)
	}
	// Handled as a delivery fresh from its consumer: its record is then judged as any
	// fetched job's.
	w.takenUpDone()
	w.handle(ctx, p.d, nil, nil)
}

// isParked reports whether a delivery of job id is kept (park).
func (w *Worker) isParked(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.takenUp == id {
		return true
	}
	for _, p := range w.parked {
		if p.d.JobID == id {
			return true
		}
	}
	return false
}

// waitsStill reports whether job id's record says it has not ended: one that ended while
// kept (canceled, expired at its TTL) is settled by handle, not kept on. A record that
// cannot be read counts as waiting: it is read again at the next due.
func (w *Worker) waitsStill(ctx context.Context, id string) bool {
	bctx, cancel := w.storeCtx(ctx)
	defer cancel()
	j, _, err := w.store.Get(bctx, id)
	return err != nil && !errors.Is(err, broker.ErrNotFound) || err == nil && !j.State.Terminal()
}

// unparkAll hands back the parked deliveries as the worker stops, as a stop hands back
// a running job (giveBack: requeued if the queue has room now, else NAKed).
func (w *Worker) unparkAll() {
	w.mu.Lock()
	parked := w.parked
	w.parked, w.unparked = nil, true
	w.mu.Unlock()
	for _, p := range parked {
		log := w.log.With("job_id", p.d.JobID, "model", p.d.Model)
		ctx, cancel := w.storeCtx(context.Background())
		w.giveBack(ctx, p.d, log)
		cancel()
		p.release()
	}
}
