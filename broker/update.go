package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Update applies fn to job id at revision rev and writes it back only if nobody wrote the
// record since (optimistic concurrency). It returns ErrConflict when rev is stale and
// ErrIllegalTransition when fn moves the state somewhere it may not go.
func (s *Store) Update(ctx context.Context, id string, rev uint64, fn func(*Job) error) (*Job, uint64, error) {
	cur, curRev, err := s.Get(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	if curRev != rev {
		return nil, 0, fmt.Errorf("%w: job %s is at revision %d, not %d", ErrConflict, id, curRev, rev)
	}
	return s.write(ctx, cur, rev, fn)
}

// Modify applies fn to the current record of job id and writes it back, re-reading and
// re-applying fn when a concurrent write wins the race. fn sees a fresh copy each time.
func (s *Store) Modify(ctx context.Context, id string, fn func(*Job) error) (*Job, uint64, error) {
	for range 20 {
		cur, rev, err := s.Get(ctx, id)
		if err != nil {
			return nil, 0, err
		}
		j, newRev, err := s.write(ctx, cur, rev, fn)
		if errors.Is(err, ErrConflict) {
			continue
		}
		return j, newRev, err
	}
	return nil, 0, fmt.Errorf("%w: job %s kept changing", ErrConflict, id)
}

// ModifyFrom is Modify starting from cur, job id's record as read at revision rev: when
// nobody wrote the record since, it costs the one write and no read. On a concurrent
// write it re-reads the record and re-applies fn, as Modify does.
func (s *Store) ModifyFrom(ctx context.Context, cur *Job, rev uint64, fn func(*Job) error) (*Job, uint64, error) {
	j, newRev, err := s.write(ctx, cur, rev, fn)
	if errors.Is(err, ErrConflict) {
		return s.Modify(ctx, cur.ID, fn)
	}
	return j, newRev, err
}

func (s *Store) write(ctx context.Context, cur *Job, rev uint64, fn func(*Job) error) (*Job, uint64, error) {
	next := cur.clone()
	if err := fn(next); err != nil {
		return nil, 0, err
	}
	if next.ID != cur.ID {
		return nil, 0, fmt.Errorf("broker: job id cannot change (%s → %s)", cur.ID, next.ID)
	}
	if !CanTransition(cur.State, next.State) {
		return nil, 0, fmt.Errorf("%w: %s → %s (job %s)", ErrIllegalTransition, cur.State, next.State, cur.ID)
	}
	now := s.Now()
	next.At = now
	if next.State != cur.State {
		if (next.State == StateLoading || next.State == StateWorking) && next.StartedAt == nil {
			next.StartedAt = &now
		}
		if next.State.Terminal() && next.FinishedAt == nil {
			next.FinishedAt = &now
		}
	}
	// What a later foreman stored in the record is carried on, also by next's own
	// rewrites (ModifyFrom).
	next.raw, next.later, next.laterRead = nil, cur.laterFields(), true
	data, err := encodeRecord(next, next.later)
	if err != nil {
		return nil, 0, err
	}
	var newRev uint64
	tries := 0
	sameState := next.State == cur.State && next.Attempt == cur.Attempt
	if !sameState && !s.cfg.Exclusive {
		// Noted before the write: its state event may come before its answer. A store of
		// its own wrote every change there is (WroteState) and notes none.
		s.own.note(next, s.clock(), s.JobTTL())
	}
	err = s.retryWrite(ctx, func(ctx context.Context) error {
		var err error
		tries++
		newRev, err = s.updateRecord(ctx, cur.ID, data, rev, sameState)
		return err
	})
	s.writes.records.note(err, s.clock())
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			if tries > 1 {
				// A try whose answer was lost (a timeout during a leader election) may have
				// been stored all the same: then the conflict is with this very write, and
				// applying fn again would count it twice (an attempt started twice).
				if landed, ok := s.landed(ctx, cur.ID, rev, data); ok {
					s.keepClaim(ctx, next)
					return next, landed, nil
				}
			}
			if !sameState {
				s.own.forget(next) // another writer's, if any
			}
			return nil, 0, fmt.Errorf("%w: job %s", ErrConflict, cur.ID)
		}
		return nil, 0, fmt.Errorf("broker: update %s: %w", cur.ID, storageErr(err))
	}
	s.keepClaim(ctx, next)
	return next, newRev, nil
}

// updateRecord writes data as job id's record if its revision is still rev, as
// kv.Update does. A write that keeps the state and the attempt is marked with
// HeaderSameState: watchers see the record again, but no state change to report. A
// stale rev fails as kv.Update's does (errors.Is jetstream.ErrKeyExists).
func (s *Store) updateRecord(ctx context.Context, id string, data []byte, rev uint64, sameState bool) (uint64, error) {
	if !sameState {
		return s.kv.Update(ctx, jobKey(id), data, rev)
	}
	msg := nats.NewMsg("$KV." + JobsBucket + "." + jobKey(id))
	msg.Header.Set(HeaderSameState, "1")
	msg.Data = data
	ack, err := s.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(rev))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		// As kv.Update words a stale revision, both ways the server says it: a replicated
		// stream answers the second while another write to the key is in flight.
		return 0, fmt.Errorf("%w: %w", jetstream.ErrKeyExists, err)
	}
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// landed reports whether job id's record, written at revision rev, now holds data at
// the next revision: a write of ours that was stored though its answer was lost. It
// returns that revision.
func (s *Store) landed(ctx context.Context, id string, rev uint64, data []byte) (uint64, bool) {
	var e jetstream.KeyValueEntry
	err := s.retry(ctx, func(ctx context.Context) error {
		var err error
		e, err = s.kvGet(ctx, jobKey(id))
		return err
	})
	if err != nil || e.Revision() <= rev || !bytes.Equal(e.Value(), data) {
		return 0, false
	}
	return e.Revision(), true
}

func (j *Job) clone() *Job {
	c := *j
	c.Artifacts = append([]Artifact(nil), j.Artifacts...)
	c.Result = append(json.RawMessage(nil), j.Result...)
	if len(c.Result) == 0 {
		c.Result = nil
	}
	if j.Webhook != nil {
		w := *j.Webhook
		w.Events = append([]State(nil), j.Webhook.Events...)
		c.Webhook = &w
	}
	return &c
}

// Cancel cancels job id. A queued or retrying job moves to canceled at once and leaves
// the queue, so it never reaches the target. A running job (loading or working) only gets
// its cancellation requested: Cancel sets CancelRequested to reason and leaves the state
// alone, because the worker is the one writer of a running job's terminal state (it
// publishes the stream's final marker before that write, and the two must agree). The
// worker then aborts the target call and writes canceled itself, unless the job finishes
// first (then it ends done and the request is moot); watch the record for the outcome. A
// second request keeps the first reason. A finished job gives ErrTerminal. The record
// returned is the one written.
func (s *Store) Cancel(ctx context.Context, id, reason string) (*Job, error) {
	return s.cancel(ctx, id, reason, s.removeQueued)
}

// CancelSubmitted is Cancel of job j as this process's Submit returned it (the gateway's
// cancel of a sync job whose caller went away): its queue message is deleted by the
// sequence the submit stored it at, not looked for. The look reads the job's queue
// subject from its submit on, one message at a time, so a burst of cancels of jobs
// submitted together (hundreds of callers hanging up at once) read the queue's messages
// some hundred thousand times, ran out of time and left their messages in the queue,
// holding its room until the worker met them. A job the submit did not store a message
// for (a resubmit's), or whose message is no longer at that sequence (taken and run,
// and queued again for a retry), is canceled as Cancel does.
func (s *Store) CancelSubmitted(ctx context.Context, j *Job, reason string) (*Job, error) {
	seq := j.submitSeq
	if seq == 0 {
		return s.Cancel(ctx, j.ID, reason)
	}
	return s.cancel(ctx, j.ID, reason, func(ctx context.Context, rec *Job) error {
		switch err := s.deleteQueueMsg(ctx, seq); {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			return s.removeQueued(ctx, rec)
		case err != nil:
			return err
		}
		s.dropBody(ctx, rec)
		return nil
	})
}

// ErrStarted is the error of CancelQueued for a job that has started (loading or
// working): it is left to run.
var ErrStarted = errors.New("broker: job started")

// CancelQueued cancels job id as Cancel does, but only while it waits (queued, or
// retrying between attempts): one that has started gives ErrStarted and runs on, one
// that ended ErrTerminal. The record's revision decides a race with a worker's start
// write: the one written second fails.
func (s *Store) CancelQueued(ctx context.Context, id, reason string) (*Job, error) {
	return s.cancelIf(ctx, id, reason, true, s.removeQueued)
}

// cancel is Cancel with the way a queued job's message leaves the queue.
func (s *Store) cancel(ctx context.Context, id, reason string, remove func(context.Context, *Job) error) (*Job, error) {
	return s.cancelIf(ctx, id, reason, false, remove)
}

// cancelIf is cancel, of a job that waits only when queuedOnly.
func (s *Store) cancelIf(ctx context.Context, id, reason string, queuedOnly bool, remove func(context.Context, *Job) error) (*Job, error) {
	var prev State
	var unchanged *Job
	j, _, err := s.Modify(ctx, id, func(j *Job) error {
		prev = j.State
		switch j.State {
		case StateDone, StateFailed, StateCanceled:
			return fmt.Errorf("%w: job %s is %s", ErrTerminal, j.ID, j.State)
		case StateLoading, StateWorking:
			if queuedOnly {
				return fmt.Errorf("%w: job %s is %s", ErrStarted, j.ID, j.State)
			}
			if j.CancelRequested != "" {
				unchanged = j
				return errUnchanged
			}
			j.CancelRequested = reason
			if reason == "" {
				j.CancelRequested = DefaultCancelReason
			}
		default:
			j.State = StateCanceled
			if reason != "" {
				j.Error = reason
			}
		}
		return nil
	})
	if errors.Is(err, errUnchanged) {
		return unchanged, nil
	}
	if err != nil {
		return nil, err
	}
	if prev == StateQueued || prev == StateRetrying {
		if err := remove(ctx, j); err != nil {
			// The worker drops a canceled job's message when it meets it.
			s.log.Warn("remove canceled job from queue", "job_id", j.ID, "model", j.Model, "err", err)
		}
	}
	return j, nil
}

// DefaultCancelReason is the CancelRequested of a running job canceled without a reason
// (the field must not be empty to count).
const DefaultCancelReason = "canceled"

// errUnchanged stops a Modify that has nothing to write.
var errUnchanged = errors.New("broker: record unchanged")

// removeQueued deletes the queue message of job j, looked for from the job's submit on
// (queuedMessage), not through the jobs queued before it.
func (s *Store) removeQueued(ctx context.Context, j *Job) error {
	seq, ok, err := s.queuedMessage(ctx, j)
	if err != nil || !ok {
		return err
	}
	err = s.deleteQueueMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	s.dropBody(ctx, j)
	return err
}

// queueSubjectsOf names the queue subjects job j's message may be on: the load options
// are not in the record, so every runner of the job's class and program.
func queueSubjectsOf(j *Job) ([]string, error) {
	key, err := KeyOf(j, nil)
	if err != nil {
		return nil, err
	}
	subjects := []string{queuePrefix + key.Model + ".*." + string(key.Class) + "." + key.Program}
	if key.String() == key.Model {
		subjects = append(subjects, QueueSubject(key.Model))
	}
	return subjects, nil
}

func (s *Store) dropBody(ctx context.Context, j *Job) {
	if j.BodyRef != "" {
		s.deleteBody(ctx, j.ID, j.BodyRef)
	}
}
