package worker

import (
	"context"
	"errors"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// A job cut short when the last process of this foreman stopped (killed mid-run, or
// handed back by a stop) had its turn already: on an exclusive store, where no other
// process runs jobs, it runs before every other job when the worker is back, and the
// queue view shows it first (ADR-0044). On a shared NATS a running record may be another
// foreman's run, and a dead foreman's job comes back after the ack wait in its turn.

// errDied is the error a job's record gets when the worker finds that the process before
// it died while the job ran: the record said it ran, and nothing runs it.
var errDied = errors.New("foreman stopped while the job ran")

// cutShort reports whether job j, whose queue message seq heads its queue on an exclusive
// store, was cut short by the last stop: its record says it runs (no process runs it now:
// the last one died mid-run) unless the message is a spare copy of it, or that a stop
// handed it back, or that a worker found it so already (a restart since).
func cutShort(j *broker.Job, seq uint64) bool {
	switch j.State {
	case broker.StateLoading, broker.StateWorking:
		return !j.IsSpare(seq)
	case broker.StateRetrying:
		return j.Error == errShutdown.Error() || j.Error == errDied.Error() && !diedSpare(j, seq)
	}
	return false
}

// diedSpare reports whether the message at seq is a spare copy of job j, whose record
// markDied wrote (IsSpare's rule, for the record it wrote as waiting).
func diedSpare(j *broker.Job, seq uint64) bool {
	return j.State == broker.StateRetrying && j.Error == errDied.Error() && j.QueueSeq != 0 && j.QueueSeq != seq
}

// readResumed finds, at the worker's first pick, the jobs cut short by the last stop among
// the queues' heads (choice.Resume). One whose message is not its queue's head (an older
// job of its queue waits out a retry back-off) is not found, and runs in its turn.
func (w *Worker) readResumed(ctx context.Context, heads []head) error {
	found := map[string]uint64{}
	ending := 0 // found, but to be canceled when taken, not run
	if w.store.Config().Exclusive {
		for _, h := range heads {
			if h.JobID == "" {
				continue
			}
			j, _, err := w.store.Get(ctx, h.JobID)
			if err != nil {
				if broker.Transient(err) || ctx.Err() != nil {
					return err
				}
				continue // no record yet, or one the pick deals with
			}
			if !cutShort(j, h.Seq) {
				continue
			}
			found[h.Token] = h.Seq
			if j.CancelRequested != "" {
				ending++ // a sync job of the process that died (sweep), or one canceled meanwhile
				continue
			}
			if j.State == broker.StateLoading || j.State == broker.StateWorking {
				w.markDied(ctx, j.ID)
			}
		}
	}
	w.mu.Lock()
	w.cutJobs, w.resumeRead = found, true
	w.mu.Unlock()
	// A job whose cancel is asked for goes first too, and ends without running: the log
	// does not count it among those that run.
	if run := len(found) - ending; run > 0 {
		w.log.Info("jobs cut short by the last stop run first", "jobs", run)
	}
	if ending > 0 {
		w.log.Info("jobs cut short by the last stop end canceled, unrun", "jobs", ending)
	}
	return nil
}

// pruneResume forgets the resumed jobs that head their queue no more: they ran, ended or
// were canceled.
func (w *Worker) pruneResume(heads []head) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.cutJobs) == 0 {
		return
	}
	live := make(map[string]uint64, len(heads))
	for _, h := range heads {
		live[h.Token] = h.Seq
	}
	for tok, seq := range w.cutJobs {
		if live[tok] != seq {
			delete(w.cutJobs, tok)
		}
	}
}

// resumed forgets the resumed job that delivery d is: it is taken.
func (w *Worker) resumed(d *broker.Lease) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if seq, ok := w.cutJobs[d.Token]; ok && seq == d.Seq {
		delete(w.cutJobs, d.Token)
	}
}

// resumeReadNow reports whether the first pick looked for jobs cut short already.
func (w *Worker) resumeReadNow() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.resumeRead
}

// cutShortWaiting reports whether jobs cut short by the last stop wait to be taken.
func (w *Worker) cutShortWaiting() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.cutJobs) > 0
}

// markDied writes the record of job id, cut short by a process that died while it ran,
// as waiting to run again: it said the job ran (GET /jobs showed it working, while the
// queue showed it first in line) for as long as the job waited, a whole outage long when
// the target is down. The attempt cut off keeps its count. A job that ended meanwhile, or
// whose cancel was asked for, is left to the pick as it is.
func (w *Worker) markDied(ctx context.Context, id string) {
	_, err := w.transition(ctx, id, fromLive, func(j *broker.Job) {
		j.State, j.Error = broker.StateRetrying, errDied.Error()
	})
	if err != nil && !errors.Is(err, errEnded) && !errors.Is(err, errCancelRequested) {
		w.log.Warn("store the state of a job cut short", "job", id, "err", err)
	}
}
