package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// errNotStarted ends a target call whose start write failed; the failure itself is
// handled by startFailed.
var errNotStarted = errors.New("the attempt's start could not be stored")

// startWrite is an attempt's start write, stored while the target call runs.
type startWrite struct {
	done chan struct{}
	job  *broker.Job // the record written
	err  error
}

// failed reports, without waiting, whether the start write has failed.
func (sw *startWrite) failed() bool {
	select {
	case <-sw.done:
		return sw.err != nil
	default:
		return false
	}
}

// wait waits for the start write to be stored and returns the record written.
func (sw *startWrite) wait() (*broker.Job, error) {
	<-sw.done
	return sw.job, sw.err
}

// startAttempt stores the start of the next attempt of job j (read at revision rev) in
// the background: the attempt counted, the job loading or working, the queue message
// running it named. If it fails it aborts the target call. The caller waits for it
// (startWrite.wait) before it returns.
func (w *Worker) startAttempt(ctx context.Context, d *broker.Lease, j *broker.Job, rev uint64, state broker.State, abort context.CancelCauseFunc, log *slog.Logger) *startWrite {
	sw := &startWrite{done: make(chan struct{})}
	go func() {
		defer close(sw.done)
		if hook := w.cfg.beforeStart; hook != nil {
			hook(d.JobID)
		}
		if fault := w.cfg.startFault; fault != nil {
			if sw.err = fault(d.JobID); sw.err != nil {
				abort(errNotStarted)
				return
			}
		}
		var newRev uint64
		sw.job, newRev, sw.err = w.transitionFrom(ctx, j, rev, fromLive, func(j *broker.Job) {
			j.State, j.Error, j.QueueSeq = state, "", d.Seq
			j.Attempt++
			w.nameRunner(j)
		})
		if lost := w.cfg.startAnswerLost; sw.err == nil && lost != nil && lost(d.JobID) {
			// As a real one fails: no answer in time.
			sw.job, sw.err = nil, fmt.Errorf("start stored, its answer lost (test): %w", context.DeadlineExceeded)
		}
		if sw.err != nil {
			abort(errNotStarted)
			return
		}
		w.written.put(sw.job, newRev)
		w.trace(d.JobID, StageStarted)
		log.Info("job started", "state", state, "kind", sw.job.Kind, "delivered", d.NumDelivered, "attempt", sw.job.Attempt)
	}()
	return sw
}

// nameRunner names this foreman as the runner of j's attempt being started, counted
// already (ADR-0064).
func (w *Worker) nameRunner(j *broker.Job) {
	j.Runner, j.RunnerBoot, j.RunnerAttempt = w.cfg.TargetName, w.store.BootID(), j.Attempt
}

// startFailed ends an attempt whose start write failed, its target call aborted: a job
// that ended meanwhile is acked, one whose cancellation was requested ends canceled, and
// on any other failure the job is handed back for a later try, unless it is a sync job
// whose caller already has frames of it (r, nil before any call, says; ADR-0036): a
// second attempt cannot be spliced into that answer, so the job fails. j is the record
// the attempt started from. A job handed back has its attempt given back, should the
// failed write have been stored after all (giveStartBack).
func (w *Worker) startFailed(ctx context.Context, d *broker.Lease, j *broker.Job, r *broker.StreamWriter, err error, log *slog.Logger) {
	bctx, cancel := w.storeCtx(ctx)
	defer cancel()
	switch {
	case errors.Is(err, errEnded):
		w.finish(bctx, d, log)
	case errors.Is(err, errCancelRequested):
		w.cancelRun(bctx, d, w.store.StreamWriter(d.JobID), log)
	case j.Sync && r != nil && r.Published():
		w.fail(bctx, d, true, r, "store the attempt's start: "+err.Error(), 0, log)
	default:
		log.Warn("start job; will retry", "err", err)
		gerr := w.giveStartBack(bctx, d, j.Attempt, err)
		if w.settledGivingBack(bctx, d, gerr, log) {
			return
		}
		// A give-back the store still refused after terminalWait leaves the record saying
		// the job runs here at an attempt that never ran: its next delivery would count
		// it, and with FOREMAN_MAX_ATTEMPTS=1 fail the job "attempts exhausted" unrun. It
		// is tried again once the store takes writes, the delivery held meanwhile.
		pending := gerr != nil && w.refusing(gerr)
		switch {
		case !w.refusing(err):
			w.nak(d, w.cfg.RetryDelay, log)
		case d.NumDelivered >= uint64(w.store.Config().MaxDeliver()):
			// JetStream's last delivery: NAKed, the message would never come back, and the
			// delivery limit's advisory would fail a job that never ran "attempts
			// exhausted" once the store takes its write. It is held (the keep-alive goes
			// on) while the worker waits for the store, then queued again at its queue's
			// end, its deliveries counted anew, as a stop's hand-back of a last delivery is.
			w.waitStore(ctx, err)
			if pending && w.giveStartBackAgain(ctx, d, j.Attempt, err, log) {
				return
			}
			w.requeueUnrun(ctx, d, log)
		case pending:
			w.waitStore(ctx, err)
			if w.giveStartBackAgain(ctx, d, j.Attempt, err, log) {
				return
			}
			if w.isStopping(ctx) {
				gctx, cancel := w.storeCtx(ctx)
				defer cancel()
				w.giveBack(gctx, d, log)
				return
			}
			w.nak(d, w.cfg.RetryDelay, log)
		default:
			w.nak(d, w.cfg.RetryDelay, log)
			w.waitStore(ctx, err)
		}
	}
}

// settledGivingBack deals with giveStartBack's error gerr for delivery d, and reports
// whether it settled d: a job that ended is acked, one whose cancellation was requested
// ends canceled.
func (w *Worker) settledGivingBack(ctx context.Context, d *broker.Lease, gerr error, log *slog.Logger) bool {
	switch {
	case errors.Is(gerr, errEnded):
		w.finish(ctx, d, log)
		return true
	case errors.Is(gerr, errCancelRequested):
		w.cancelRun(ctx, d, w.store.StreamWriter(d.JobID), log)
		return true
	case gerr != nil && !errors.Is(gerr, errNoStart):
		log.Warn("give back the attempt of a start write that may have been stored", "err", gerr)
	}
	return false
}

// giveStartBackAgain tries giveStartBack once more after the worker waited for the store
// (waitStore), with time of its own, and reports whether that settled d.
func (w *Worker) giveStartBackAgain(ctx context.Context, d *broker.Lease, read int, cause error, log *slog.Logger) bool {
	gctx, cancel := w.storeCtx(ctx)
	defer cancel()
	return w.settledGivingBack(gctx, d, w.giveStartBack(gctx, d, read, cause), log)
}

// requeueUnrun puts back a job whose last delivery ran no attempt, once the store takes
// writes again (or the worker stops: giveBack): as a new message (requeueLast); kept
// (park) when the queue is full, or NAKed when the store answers that requeue otherwise.
func (w *Worker) requeueUnrun(ctx context.Context, d *broker.Lease, log *slog.Logger) {
	const what = "requeue a job whose start the store refused on its last delivery"
	switch requeued, err := w.requeueLast(ctx, d, what, log); {
	case errors.Is(err, broker.ErrQueueFull):
		w.park(d, w.cfg.RetryDelay, log)
	case err != nil:
		log.Warn(what+"; trying a NAK", "err", err)
		w.nak(d, w.cfg.RetryDelay, log)
	case requeued:
		log.Info("job requeued: the store refused its start on its last delivery")
	}
}

// requeueLast puts back delivery d, its job's last, as a new message (Store.Requeue). A
// requeue the store refuses for now (its queue's stream without a leader while the
// records' has one, say) is tried again after a wait for the store, the delivery still
// held (kept in progress by its handler's keeper): NAKed, the last delivery would never
// come back, and the delivery limit's advisory would fail the job with its attempts
// unspent. As the worker stops, d is handed back instead (giveBack). It reports whether
// d was requeued; err is the store's other answer (a full queue: the caller keeps d,
// park), d left unsettled for the caller. what names the requeue in the log.
func (w *Worker) requeueLast(ctx context.Context, d *broker.Lease, what string, log *slog.Logger) (requeued bool, err error) {
	for pause := w.cfg.RetryDelay; ; pause = min(2*pause, maxHoldPause) {
		bctx, cancel := w.storeCtx(ctx) // its own time: a wait for the store may have been long
		if w.isStopping(ctx) {
			w.giveBack(bctx, d, log)
			cancel()
			return false, nil
		}
		err := w.requeue(bctx, d)
		cancel()
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, broker.ErrTerminal):
			w.dropEnded(ctx, d, log) // canceled meanwhile
			return false, nil
		case w.refusing(err):
			log.Warn(what+"; trying again once the store takes writes", "err", err)
			// The probe may pass while the queue's stream still refuses: a pause too.
			w.waitStore(ctx, err)
			w.sleep(ctx, pause)
		default:
			return false, err
		}
	}
}

// errNoStart stops giveStartBack when the record holds no start of this attempt: the
// failed start write was not stored.
var errNoStart = errors.New("the attempt's start is not in the record")

// giveStartBack gives back the attempt counted by a start write that failed yet was
// stored: its answer was lost (a timeout while a cluster elects a leader, a slow disk),
// and the record says the job runs here, at attempt read+1, while it goes back to the
// queue unrun. Counted, that attempt would be spent on nothing: with FOREMAN_MAX_ATTEMPTS=1
// the next delivery would fail the job "attempts exhausted" without its target ever
// answering. The record goes retrying, with its attempt count as before the start; only
// a record that holds that very start (this foreman's, of delivery d, at read+1) is
// written. Only a write that got no answer (broker.Transient) may have been stored: one
// the store refused (out of room, say) was not, and nothing is read for it. While the
// store refuses for now it is tried again for up to terminalWait, as an uncounted
// retrying write is (storeRetrying). It returns errNoStart when there is no such start
// to give back, or the guard's error (fromLive) of a job that ended or whose
// cancellation was requested.
func (w *Worker) giveStartBack(ctx context.Context, d *broker.Lease, read int, cause error) error {
	if !broker.Transient(cause) || errors.Is(cause, broker.ErrStorageFull) || errors.Is(cause, broker.ErrStoreFailed) {
		return errNoStart
	}
	boot := w.store.BootID()
	set := func(rec *broker.Job) error {
		if err := fromLive(rec); err != nil {
			return err
		}
		running := rec.State == broker.StateLoading || rec.State == broker.StateWorking
		if !running || rec.Attempt != read+1 || rec.RunnerAttempt != rec.Attempt || rec.RunnerBoot != boot || rec.QueueSeq != d.Seq {
			return errNoStart
		}
		rec.State, rec.Error = broker.StateRetrying, errorText("store the attempt's start: "+cause.Error())
		rec.Attempt--
		return nil
	}
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.terminalWait())
	defer cancel()
	for pause := terminalPause; ; pause = min(2*pause, 2*time.Second) {
		var err error
		if fault := w.cfg.giveBackFault; fault != nil {
			err = fault(d.JobID)
		}
		if err == nil {
			_, _, err = w.store.Modify(tctx, d.JobID, set)
		}
		if err == nil || !w.refusing(err) || w.isStopping(tctx) || !sleepCtx(tctx, pause) {
			return err
		}
	}
}

// recordRead is a read of a job's record, and of the target's loaded models when the
// job may need another runner than the last one, begun before the worker holds the job's
// queue message: the reads and the fetch take one round trip's time, not three.
type recordRead struct {
	id   string
	done chan struct{}
	job  *broker.Job
	rev  uint64
	err  error
}

// readAhead starts reading job id's record, and refreshing what the target has loaded for
// queue token (refreshLoaded), in the background; wait (or take) ends both.
//
// Reading before the lease is held is safe: the record only decides whether to start the
// job, and the start write is conditional on the revision read (Store.ModifyFrom), so a
// write in between makes it read the record again. A record not found yet (its write may
// trail the queue message) or any error is no answer: the worker reads it again then. The
// loaded models read is the one isLoaded would make after the fetch.
//
// A job submitted in this process comes with created (broker.Published.Created): the
// record its submit's create stores, handed over as the create is acknowledged. It is
// read from the store only when that create failed; a read begun at the wake-up, which
// comes before the submit's writes, nearly always came before the record was stored,
// found nothing, and was made again after the fetch: two requests for one record.
func (w *Worker) readAhead(ctx context.Context, id, token string, created func(context.Context) (*broker.Job, uint64, bool)) *recordRead {
	if broker.ValidateID(id) != nil {
		return nil
	}
	r := &recordRead{id: id, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() { w.refreshLoaded(ctx, []head{{Token: token, Runner: runnerOf(token)}}) })
	wg.Go(func() {
		if r.err = w.recordFaulted(id); r.err != nil {
			return
		}
		if created != nil {
			// The submit's create ends within its retry window; a stop does not wait it out.
			cctx, cancel := w.untilStop(ctx)
			j, rev, ok := created(cctx)
			cancel()
			if ok {
				r.job, r.rev = j, rev
				return
			}
		}
		r.job, r.rev, r.err = w.store.Get(ctx, id)
	})
	go func() {
		wg.Wait()
		close(r.done)
	}()
	return r
}

// wait waits for the reads to end. A nil read has nothing to wait for.
func (r *recordRead) wait() {
	if r != nil {
		<-r.done
	}
}

// take waits for the reads to end and returns the record read when it is job id's and
// the read succeeded.
func (r *recordRead) take(id string) (*broker.Job, uint64, bool) {
	if r == nil {
		return nil, 0, false
	}
	<-r.done
	if r.id != id || r.err != nil {
		return nil, 0, false
	}
	return r.job, r.rev, true
}
