package broker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Resubmit makes sure job id has its queue message while its record says queued. An
// idempotent retry calls it: a crash between Submit's record write and its publish leaves
// a queued record that no worker would ever see. The publish carries the job id as
// Nats-Msg-Id, so within the queue's duplicate window it is dropped when the first one
// made it. From half the window on, and for a job whose body is stored apart, the queue
// is searched for the job's message first (queuedMessage) and the job is published again
// only without one (a copy stored beside the first one would hold a second place in the
// queue). bodyOf gives the body the job was queued with, from its record: the retry's
// request is the first one's (the idempotency key's digest says so), but what was queued
// may be more, as of the record (a gateway's body naming the model an alias was queued
// under, Job.Model: ADR-0068), and a retry, whose checks may not even have resolved the
// model (ADR-0140), knows it from there. For a message the job has, a large body is
// stored again only when its object is gone. It returns the job as found.
//
// A job queued again ages from now, as Requeue's does: its record is rewritten (as
// Refresh does) and a large body stored again before the publish. Left as old as the
// first submit, both would expire a TTL after it while the new message waits, and the
// job end in no state, or failed for want of its body (ADR-0043). Both only while the
// record, read from its leader, still says the job waits: one that ended since the
// first read (a run acked, Finish dropping its body) has no message for that reason, and
// a body stored again, or a message, would outlive it for a TTL.
func (s *Store) Resubmit(ctx context.Context, id string, bodyOf func(*Job) []byte) (*Job, error) {
	j, _, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if j.State != StateQueued {
		return j, nil
	}
	body := bodyOf(j)
	key, err := KeyOf(j, body)
	if err != nil {
		return nil, err
	}
	if j.BodyRef != "" || s.jobAge(j) >= s.dup/2 {
		// Its first message may be past the queue's duplicate window, where a second one
		// would be stored beside it: a second place in the queue, counted twice against
		// its bounds and left behind by a cancel. And a body is stored again only for a
		// job known to have no message: a worker may be reading the one it has. Look for
		// it first.
		_, ok, err := s.queuedMessage(ctx, j)
		if err != nil {
			return nil, fmt.Errorf("broker: resubmit %s: %w", id, storageErr(err))
		}
		if ok {
			if err := s.restoreBody(ctx, j, body); err != nil {
				return nil, err
			}
			return j, nil
		}
	}
	cur, waits, err := s.renewWaiting(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("broker: resubmit %s: %w", id, err)
	}
	if !waits {
		return cur, nil
	}
	if j.BodyRef != "" {
		if err := s.putBody(ctx, j.BodyRef, body); err != nil {
			return nil, fmt.Errorf("broker: resubmit %s: request body: %w", id, storageErr(err))
		}
	}
	if err := s.enqueue(ctx, j, key, body); err != nil {
		return nil, err
	}
	return cur, nil
}

// queuedMessage finds the queue message of queued job j: its sequence, and whether there
// is one. Its answer decides whether the job's stored body may be written again, which a
// worker holding the message may be reading, so every read asks the queue's leader: a
// replica behind it says "no message" of one it has not stored yet.
//
// The queue's subjects hold other jobs' messages, bodies and all, and none names a job
// (a work queue takes no second consumer, so no headers-only read either). The look
// starts at the job's submit instead: every message of the job was stored after its
// first record write, less RecordGrace (Submit writes both at once and may retry the
// record's for that long), and a subject keeps its messages in the order stored. The
// jobs queued before it, most of a deep queue, are skipped; the job's own message is
// among the first read. Only a job without one (a crash's), or one whose message the
// queue leader's clock dates before that start, reads its subjects to the end, and then
// again from their start.
func (s *Store) queuedMessage(ctx context.Context, j *Job) (uint64, bool, error) {
	subjects, err := queueSubjectsOf(j)
	if err != nil {
		return 0, false, err
	}
	first, found, err := s.firstWritten(ctx, j.ID)
	if err != nil {
		return 0, false, err
	}
	if !found {
		return s.walkQueue(ctx, j.ID, subjects, nil)
	}
	from := first.Add(-s.RecordGrace() + s.lookShift)
	seq, ok, err := s.walkQueue(ctx, j.ID, subjects, &from)
	if err != nil || ok {
		return seq, ok, err
	}
	// from is by the jobs bucket leader's clock, the messages' times by the queue
	// leader's: on a cluster two servers, whose clocks may be apart by more than
	// RecordGrace, and the job's message stored "before" from. Before the caller publishes
	// a second copy, the subjects are read from their start: only a job that truly lost
	// its message (a crash between Submit's two writes) pays for it.
	return s.walkQueue(ctx, j.ID, subjects, nil)
}

// walkQueue reads subjects in turn, each from its first message stored at or after from
// (nil: from its start), for job id's message: its sequence, and whether there is one.
func (s *Store) walkQueue(ctx context.Context, id string, subjects []string, from *time.Time) (uint64, bool, error) {
	// A subject filling as fast as it is read would keep the look going: past the most
	// messages the queue holds it gives up, and the caller tries again.
	limit := s.cfg.MaxQueue
	if info := s.queue.CachedInfo(); info != nil {
		limit = max(limit, info.Config.MaxMsgs)
	}
	for _, subj := range subjects {
		get := msgGet{NextFor: subj, StartTime: from}
		for n := int64(0); ; n++ {
			if n > limit {
				return 0, false, fmt.Errorf("%w: the queue of %s changes faster than it is read", ErrUnavailable, id)
			}
			var m *storedMsg
			err := s.retry(ctx, func(ctx context.Context) (err error) {
				m, err = s.leaderMsg(ctx, QueueStream, get)
				return err
			})
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				return 0, false, err
			}
			if h, herr := nats.DecodeHeadersMsg(m.Header); herr == nil && h.Get(HeaderJobID) == id {
				return m.Seq, true, nil
			}
			get = msgGet{NextFor: subj, Seq: m.Seq + 1}
		}
	}
	return 0, false, nil
}

// firstWritten is when the oldest revision the job bucket keeps of job id's record was
// written, by the server's clock; found is false when it keeps none.
func (s *Store) firstWritten(ctx context.Context, id string) (first time.Time, found bool, err error) {
	var m *storedMsg
	err = s.retry(ctx, func(ctx context.Context) (err error) {
		m, err = s.leaderMsg(ctx, "KV_"+JobsBucket, msgGet{NextFor: "$KV." + JobsBucket + "." + jobKey(id)})
		return err
	})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, err
	}
	return m.Time, true, nil
}

// renewWaiting rewrites job id's record unchanged, as Refresh does, while the job still
// waits (queued or retrying), and says whether it did, with the record as it stands. The
// record is read from the bucket's leader and written only at the revision read, so a
// yes means the job waited when the write landed; a record written meanwhile is read
// again, and if the job still waits, that write renewed it as well as this one would
// have (retries of one key racing each other: one writes, the others find its write).
func (s *Store) renewWaiting(ctx context.Context, id string) (*Job, bool, error) {
	var first uint64 // the revision first read
	for range 5 {
		var e jetstream.KeyValueEntry
		err := s.retry(ctx, func(ctx context.Context) (err error) {
			e, err = s.leaderGet(ctx, JobsBucket, jobKey(id))
			return err
		})
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, false, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		if err != nil {
			return nil, false, fmt.Errorf("read record: %w", err)
		}
		j, err := DecodeJob(e.Value())
		if err != nil {
			return nil, false, err
		}
		if j.State != StateQueued && j.State != StateRetrying {
			return j, false, nil
		}
		if first != 0 && e.Revision() > first {
			return j, true, nil
		}
		first = e.Revision()
		wrote, err := s.rewrite(ctx, id, e, j)
		if err != nil || wrote {
			return j, wrote, err
		}
	}
	return nil, false, fmt.Errorf("%w: the record of %s keeps changing", ErrUnavailable, id)
}

// restoreBody stores job j's large body again should its object be gone (a submit that
// took back its body and its message, the latter in vain), for the message it still has.
func (s *Store) restoreBody(ctx context.Context, j *Job, body []byte) error {
	if j.BodyRef == "" {
		return nil
	}
	gone, err := s.bodyGone(ctx, j.BodyRef)
	if err == nil && gone {
		err = s.putBody(ctx, j.BodyRef, body)
	}
	if err != nil {
		return fmt.Errorf("broker: resubmit %s: request body: %w", j.ID, storageErr(err))
	}
	return nil
}

// bodyGone reports whether the stored body named ref is gone (deleted, or aged out), as
// the artifacts' leader says: on a replica's word that it is, the body would be written
// again under a worker reading it.
func (s *Store) bodyGone(ctx context.Context, ref string) (bool, error) {
	meta := "$O." + ArtifactsBucket + ".M." + base64.URLEncoding.EncodeToString([]byte(ref))
	var m *storedMsg
	err := s.retry(ctx, func(ctx context.Context) (err error) {
		m, err = s.leaderMsg(ctx, "OBJ_"+ArtifactsBucket, msgGet{LastFor: meta})
		return err
	})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	var info struct {
		Deleted bool `json:"deleted"`
	}
	if err := json.Unmarshal(m.Data, &info); err != nil {
		return false, fmt.Errorf("decode %s's info: %w", ref, err)
	}
	return info.Deleted, nil
}

// jobAge is how long ago job j was made, as the queue's duplicate window counts it (on
// the NATS server's clock): by its id's time (Store.NewID) against ServerNow. An id of a
// foreman from before was made on its host's clock, as was the record's CreatedAt: the
// older of the two ages counts, so a clock that was behind shortens no age. The record's
// CreatedAt alone, taken against this host's clock, made a job created through a foreman
// whose clock was minutes ahead look young long past the window: a retry published a
// second message beside the first.
func (s *Store) jobAge(j *Job) time.Duration {
	age := s.Now().Sub(j.CreatedAt)
	if t := idTime(j.ID); !t.IsZero() {
		age = max(age, s.ServerNow().Sub(t))
	}
	return age
}
