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
	// Age 0 (Requeue) always rewrites: ServerNow, the server's clock as last read and
	// carried on by this host's, may trail a stamp the server made a moment ago.
	if age > 0 && s.ServerNow().Sub(e.Created()) < age {
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
// is rewritten first (as Refresh does), to age from now like its new message: left as
// old as the first one, it would expire while the job waits at the queue's end, and the
// job end in no state.
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
func (s *Store) QueueAgain(ctx context.Context, d *Lease) error {
	if _, err := s.refresh(ctx, d.JobID, 0); err != nil {
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
	return nil
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
