package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Refresh rewrites the record of running job id, unchanged, when its last write is older
// than 3/8 of the job TTL (refreshAge). The bucket's TTL is its stream's MaxAge, which ages every
// revision from its own write: a job that runs longer than the TTL would otherwise lose
// its record, and with it its result. The rewrite is byte-for-byte the record it replaces
// (same state, same "at"), written only at the revision read, so it can never undo a
// concurrent write. It is re-published like any write: watchers see the same state again,
// marked with HeaderRefresh so that they can tell. It reports whether it wrote; a finished
// job is never rewritten. A job's idempotency claim is stamped anew with it (keepClaim).
func (s *Store) Refresh(ctx context.Context, id string) (bool, error) {
	return s.refresh(ctx, id, s.refreshAge())
}

// refreshAge is the age past which Refresh rewrites a record: 3/8 of the job TTL, so
// that with a refresh offered every RefreshEvery (an eighth) a live run's record is never
// older than half the TTL, and one refresh that fails (a leader election) leaves it at
// 5/8, an eighth short of DeadRunAge, not at it.
func (s *Store) refreshAge() time.Duration { return s.JobTTL() * 3 / 8 }

// refresh is Refresh of a record whose last write is older than age.
func (s *Store) refresh(ctx context.Context, id string, age time.Duration) (bool, error) {
	if err := ValidateID(id); err != nil {
		return false, err
	}
	e, err := s.kvGet(ctx, jobKey(id))
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return false, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return false, fmt.Errorf("broker: refresh %s: %w", id, err)
	}
	if s.ServerNow().Sub(e.Created()) < age {
		return false, nil
	}
	j, err := DecodeJob(e.Value())
	if err != nil {
		return false, err
	}
	if j.State.Terminal() {
		return false, nil
	}
	return s.rewrite(ctx, id, e, j) // false: written meanwhile, so fresh anyway
}

// rewrite writes record e of job j (id) again, byte for byte, marked with HeaderRefresh,
// and only at e's revision; it reports whether it wrote (false: the record was written
// meanwhile). A write stamps the job's idempotency claim anew.
func (s *Store) rewrite(ctx context.Context, id string, e jetstream.KeyValueEntry, j *Job) (bool, error) {
	// A KV update as kv.Update makes it, with the mark on it.
	msg := nats.NewMsg("$KV." + JobsBucket + "." + jobKey(id))
	msg.Header.Set(HeaderRefresh, "1")
	msg.Header.Set(HeaderRecordState, string(j.State)) // the state of e, written again
	msg.Data = e.Value()
	if _, err := s.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(e.Revision())); err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return false, nil
		}
		return false, fmt.Errorf("broker: refresh %s: %w", id, storageErr(err))
	}
	s.keepClaim(ctx, j)
	return true, nil
}

// RefreshEvery is how often a running job's record should be offered to Refresh: often
// enough that a record is rewritten well before it is a TTL old. A live run's record is
// then never older than half the TTL, or 5/8 after a failed refresh (see DeadRunAge).
func (s *Store) RefreshEvery() time.Duration {
	return max(s.JobTTL()/8, 10*time.Millisecond)
}

// DeadRunAge is the age past which a running record (loading, working) is no live run's:
// a live run offers its record to Refresh every RefreshEvery, which rewrites it once 3/8
// of a TTL old, so it is never older than half the TTL (5/8 with one failed refresh) and
// a store's delays. Three quarters of the TTL, which a job's queue message reaches
// before the worker's expiry (StaleBefore) gives up on it.
func (s *Store) DeadRunAge() time.Duration { return s.JobTTL() * 3 / 4 }

// OutlivesQueue reports whether the queue message of lease d may be gone before it
// could be delivered again after delay: the queue's MaxAge is the job TTL, and JetStream
// drops a message at that age even while a consumer holds it un-acked (it counts as
// terminated). A run that outlived the TTL has already lost its message, so a NAK could
// not bring the job back; Requeue must.
func (s *Store) OutlivesQueue(d *Lease, delay time.Duration) bool {
	ttl := s.JobTTL()
	return !d.Enqueued.Add(ttl).After(s.ServerNow().Add(delay + ttl/4))
}

// Requeue puts a delivered job back into the queue as a new message, available at once,
// and acks the old one (if JetStream still has it). The request body travels again; a
// large one is stored again, since its object ages like the message did. The job's record
// is rewritten (as Refresh does, however young: ServerNow, the server's clock as last
// read and carried on by this host's, may trail a stamp the server made a moment ago), to
// age from now like its new message: left as old as the first one, it would expire while
// the job waits at the queue's end, and the job end in no state. A job that ended
// (canceled while its delivery was held) gives ErrTerminal and is not queued again.
func (s *Store) Requeue(ctx context.Context, d *Lease) error {
	if err := s.QueueAgain(ctx, d); err != nil {
		return err
	}
	s.DropRequeued(ctx, d)
	return nil
}

// QueueAgain is Requeue's first part: the record rewritten and the job's new message
// published, the old one (d) left as it is. DropRequeued ends the requeue; a caller
// that keeps d in progress stops its ticks in between, and keeps them while
// QueueAgain fails.
//
// The record of a job that ended gives ErrTerminal (ErrNotFound when it is gone), and
// nothing is published: a job canceled while a worker kept its delivery (ADR-0100) had
// its copy queued once room came, holding a place in the queue (a submit refused "queue
// full") until a foreman that runs its model met it, or for a job TTL. The record is
// rewritten before the publish, so that a crash between the two leaves no message
// younger than its record, but not in a queue at its bound (as its stream info says):
// each due of a job kept for a full queue rewrote its record, a "state" event on
// foreman.job.<id>.state and one of the bucket's 16 revisions of the job (the webhooks'
// history) each time, for a publish the queue then refused. There it is rewritten after
// a publish the queue takes after all (a place freed meanwhile, or a retried publish's
// duplicate).
func (s *Store) QueueAgain(ctx context.Context, d *Lease) error {
	full := s.queueAtBound(ctx)
	if full {
		if err := s.unended(ctx, d.JobID); err != nil {
			return fmt.Errorf("broker: requeue %s: %w", d.JobID, err)
		}
	} else if err := s.freshen(ctx, d.JobID); err != nil {
		return fmt.Errorf("broker: requeue %s: %w", d.JobID, err)
	}
	msg := nats.NewMsg(QueueSubject(d.Token))
	for k, v := range d.Msg.Headers() {
		if !strings.HasPrefix(k, "Nats-") {
			msg.Header[k] = v
		}
	}
	if ref := msg.Header.Get(HeaderBodyRef); ref != "" {
		if err := s.putBody(ctx, ref, d.Body); err != nil {
			return fmt.Errorf("broker: requeue %s: store request body: %w", d.JobID, storageErr(err))
		}
	} else {
		msg.Data = d.Body
	}
	msg.Header.Set(HeaderRequeued, "1")
	// The id dedupes a retried publish of this requeue, not the job's first message.
	id := fmt.Sprintf("%s.requeue.%d", d.JobID, d.Seq)
	if _, err := s.js.PublishMsg(ctx, msg, jetstream.WithMsgID(id)); err != nil {
		return fmt.Errorf("broker: requeue %s: %w", d.JobID, storageErr(err))
	}
	if full {
		if err := s.freshen(ctx, d.JobID); err != nil {
			s.log.Warn("rewrite the record of a requeued job", "job_id", d.JobID, "model", d.Model, "err", err)
		}
	}
	return nil
}

// queueAtBound reports whether the queue holds as many messages as its bound (MaxMsgs,
// FOREMAN_MAX_QUEUE, under DiscardNew), by its stream info: a publish now would be
// refused. An info that fails says no: the publish tells.
func (s *Store) queueAtBound(ctx context.Context) bool {
	info, err := s.queue.Info(ctx)
	if err != nil {
		return false
	}
	s.noteServerTime(info.TimeStamp)
	return info.Config.MaxMsgs > 0 && info.State.Msgs >= uint64(info.Config.MaxMsgs)
}

// unended returns ErrTerminal for job id when its record says it ended, ErrNotFound
// when the record is gone.
func (s *Store) unended(ctx context.Context, id string) error {
	_, j, err := s.readRecord(ctx, id)
	if err == nil && j.State.Terminal() {
		err = fmt.Errorf("%w: job %s is %s", ErrTerminal, id, j.State)
	}
	return err
}

// freshen rewrites the record of job id however young, for its requeue (see Requeue):
// ErrTerminal for a job that ended, ErrNotFound for one whose record is gone. A record
// written meanwhile is read again, since that write may be the job's end; after three
// such writes it is fresh anyway.
func (s *Store) freshen(ctx context.Context, id string) error {
	for range 3 {
		e, j, err := s.readRecord(ctx, id)
		if err != nil {
			return err
		}
		if j.State.Terminal() {
			return fmt.Errorf("%w: job %s is %s", ErrTerminal, id, j.State)
		}
		if wrote, err := s.rewrite(ctx, id, e, j); err != nil || wrote {
			return err
		}
	}
	return nil
}

// readRecord reads the record of job id and decodes it.
func (s *Store) readRecord(ctx context.Context, id string) (jetstream.KeyValueEntry, *Job, error) {
	e, err := s.kvGet(ctx, jobKey(id))
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return nil, nil, err
	}
	j, err := DecodeJob(e.Value())
	if err != nil {
		return nil, nil, err
	}
	return e, j, nil
}

// DropRequeued removes the old message of a job Requeue queued anew: acked (retried
// through a leader election, as any ack), or else deleted by its sequence. Left in the
// queue un-acked, on its last delivery (the common reason for a requeue) JetStream gives
// up on it at its ack wait, and the MAX_DELIVERIES advisory fails the job while its new
// copy waits or runs; on an earlier one it is delivered again beside that copy.
func (s *Store) DropRequeued(ctx context.Context, d *Lease) {
	err := s.ack(ctx, d)
	if err == nil {
		return
	}
	if derr := s.DeleteQueued(ctx, d.Seq); derr != nil {
		s.log.Warn("ack or remove requeued job's old message", "job_id", d.JobID, "model", d.Model, "err", errors.Join(err, derr))
	}
}
