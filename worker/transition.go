package worker

import (
	"context"
	"errors"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// errEnded stops a record write when the job reached a terminal state meanwhile.
var errEnded = errors.New("job already ended")

// errCancelRequested stops a record write (start, retry, hand-back) of a job whose
// cancellation was requested: the worker ends it canceled instead.
var errCancelRequested = errors.New("job cancellation requested")

// from says which records a transition may start from: it returns the error that stops
// the write, nil to let it go on. Each write of the worker names one, so what a
// concurrent cancel, timeout or delivery limit does to it is read in one place.
type from func(*broker.Job) error

// fromLive: a job that has not ended and whose cancellation nobody requested (start,
// retry, hand-back).
func fromLive(j *broker.Job) error {
	if j.State.Terminal() {
		return errEnded
	}
	if j.CancelRequested != "" {
		return errCancelRequested
	}
	return nil
}

// fromUnended: any job that has not ended (terminal writes; a requested cancellation
// does not stop them).
func fromUnended(j *broker.Job) error {
	if j.State.Terminal() {
		return errEnded
	}
	return nil
}

// fromLoading: a job still loading its model; any other state is errEnded for this write.
func fromLoading(j *broker.Job) error {
	if j.State != broker.StateLoading {
		return errEnded
	}
	return nil
}

// transition applies set to job id's record, re-applied on a concurrent write as
// Store.Modify does, unless the record read is one the transition may not start from
// (see from): then nothing is written and the guard's error comes back.
func (w *Worker) transition(ctx context.Context, id string, guard from, set func(*broker.Job)) (*broker.Job, error) {
	j, _, err := w.store.Modify(ctx, id, func(j *broker.Job) error {
		if err := guard(j); err != nil {
			return err
		}
		set(j)
		return nil
	})
	return j, err
}

// transitionFrom is transition starting from cur, the record read at revision rev: one
// write when nobody wrote the record since (Store.ModifyFrom). It returns the record
// written and its revision.
func (w *Worker) transitionFrom(ctx context.Context, cur *broker.Job, rev uint64, guard from, set func(*broker.Job)) (*broker.Job, uint64, error) {
	return w.store.ModifyFrom(ctx, cur, rev, func(j *broker.Job) error {
		if err := guard(j); err != nil {
			return err
		}
		set(j)
		return nil
	})
}

// transitionLast is transition starting from the record the worker wrote last for job id
// (writtenRecs) when it has one, and keeps the record written for the next write unless
// last is set (the attempt's last write).
func (w *Worker) transitionLast(ctx context.Context, id string, last bool, guard from, set func(*broker.Job)) (*broker.Job, error) {
	var (
		j   *broker.Job
		rev uint64
		err error
	)
	if cur, curRev, ok := w.written.take(id); ok {
		j, rev, err = w.transitionFrom(ctx, cur, curRev, guard, set)
	} else {
		j, rev, err = w.store.Modify(ctx, id, func(j *broker.Job) error {
			if err := guard(j); err != nil {
				return err
			}
			set(j)
			return nil
		})
	}
	if err == nil && !last {
		w.written.put(j, rev)
	}
	return j, err
}
