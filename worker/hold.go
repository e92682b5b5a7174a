package worker

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// maxHoldPause bounds the pause between the reads of a held delivery (holdRead).
const maxHoldPause = 30 * time.Second

// holdRead deals with a read of the store that delivery d needs before its job can run
// (its record, its request body stored apart), whose first try ended with err. While the
// store does not answer it (broker.Transient: no answer within the store's retry window,
// a leader being elected) d is held, not handed back (ADR-0070): a NAK would spend one of
// the job's deliveries on no attempt, and a read outage through the last of them would
// fail the job "attempts exhausted" though it never ran. So d is kept in progress, as a
// running job's delivery is, and read tried again after a pause that grows to
// maxHoldPause, until the store answers. The worker runs one job at a time: one it
// cannot read, it could not run another in its place either.
//
// It returns read's last error: nil once it succeeded, the store's answer when that is
// an error (not found, a record that does not decode), or one the store did not answer
// when the worker stops meanwhile (the caller gives d back, as a stop does).
func (w *Worker) holdRead(ctx context.Context, d *broker.Lease, err error, what string, log *slog.Logger, read func(context.Context) error) error {
	if !broker.Transient(err) || w.isStopping(ctx) {
		return err
	}
	// One line as the outage begins and one as it ends: the reads in between would
	// repeat the first every pause.
	log.Warn(what+": the store does not answer; the delivery is held and read again until it does", "err", err)
	since := time.Now()
	stop := w.keepAlive(ctx, d, log)
	defer stop()
	for pause := w.cfg.RetryDelay; w.sleep(ctx, pause); pause = min(2*pause, maxHoldPause) {
		rctx, cancel := w.untilStop(ctx)
		err = read(rctx)
		cancel()
		if w.isStopping(ctx) {
			return err
		}
		if !broker.Transient(err) {
			log.Info(what+": the store answers again", "held", time.Since(since).Round(time.Millisecond))
			// The delivery's ack wait starts afresh: the run's own keep-alive ticks
			// first AckWait/3 after it begins, and this one's last may be as old.
			if err := d.Msg.InProgress(); err != nil {
				log.Warn("extend job ack deadline", "err", err)
			}
			return err
		}
	}
	return err // the worker stops: the store has not answered
}

// jobOf reads the record of delivered job d (Store.JobOf), as holdRead tries it.
func (w *Worker) jobOf(ctx context.Context, d *broker.Lease) (*broker.Job, uint64, error) {
	if err := w.recordFaulted(d.JobID); err != nil {
		return nil, 0, err
	}
	return w.store.JobOf(ctx, d)
}

// recordFaulted is the error Config.recordFault (tests only) fails a read of job id's
// record with; nil without one.
func (w *Worker) recordFaulted(id string) error {
	if fault := w.cfg.recordFault; fault != nil {
		return fault(id)
	}
	return nil
}

// readBody reads the request body of lease d again (Store.ReadBody), as holdRead tries
// it.
func (w *Worker) readBody(ctx context.Context, d *broker.Lease) error {
	if fault := w.cfg.bodyFault; fault != nil {
		if err := fault(d.JobID); err != nil {
			return fmt.Errorf("broker: request body: %w", err)
		}
	}
	return w.store.ReadBody(ctx, d)
}

// fetchFaulted is the error of lease d as a fetch returned it (err), but for a lease
// whose body Config.bodyFault (tests only) fails: then the lease comes with that read's
// error, as one whose body the store did not answer for.
func (w *Worker) fetchFaulted(d *broker.Lease, err error) error {
	if fault := w.cfg.bodyFault; fault != nil && d != nil && err == nil {
		if ferr := fault(d.JobID); ferr != nil {
			return fmt.Errorf("broker: request body: %w", ferr)
		}
	}
	return err
}
