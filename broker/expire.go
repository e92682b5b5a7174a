package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A job that waits in the queue for a whole job TTL would vanish: JetStream drops its
// queue message at that age (the queue's MaxAge) and its record too (the bucket's), so it
// would end in no state, with no event and no webhook. The worker ends such a job failed
// a little before that age instead (ADR-0043), every ExpireEvery.

// ExpireEvery is how often the worker looks for jobs that have waited too long: an
// eighth of the job TTL, at most a minute.
func (s *Store) ExpireEvery() time.Duration { return expireEvery(s.JobTTL()) }

func expireEvery(ttl time.Duration) time.Duration {
	return min(max(ttl/8, 10*time.Millisecond), time.Minute)
}

// StaleBefore is the time before which a job still waiting in the queue has waited too
// long: two ExpireEvery short of a job TTL ago, so that a look made every ExpireEvery
// ends it before JetStream drops it at the TTL.
func (s *Store) StaleBefore() time.Time { return s.ServerNow().Add(-StaleAge(s.JobTTL())) }

// StaleAge is how long a job may wait in the queue, with job TTL ttl, before the worker
// ends it failed (StaleBefore).
func StaleAge(ttl time.Duration) time.Duration { return ttl - 2*expireEvery(ttl) }

// ExpiredError is the Error of a job ended because it waited in the queue for ttl, after
// attempts attempts.
func ExpiredError(ttl time.Duration, attempts int) string {
	if attempts == 0 {
		return fmt.Sprintf("expired: waited in the queue for the job TTL (%s) without starting", ttl)
	}
	if attempts == 1 {
		return fmt.Sprintf("expired: waited in the queue for the job TTL (%s), tried once", ttl)
	}
	return fmt.Sprintf("expired: waited in the queue for the job TTL (%s), tried %d times", ttl, attempts)
}

// Stale returns the queue messages stored before t, oldest first, of jobs that have no
// message stored at or after t (a requeued job's old message, which its requeue could not
// take out, is not its wait). The queue holds its messages in the order they were
// stored, so the scan costs one read when none is stale; with some it reads on to the
// queue's end for the younger ones (the queue is bounded). A message of a running job is
// among them while its job runs: the caller decides by the record.
func (s *Store) Stale(ctx context.Context, t time.Time) ([]Pending, error) {
	var old []Pending
	young := map[string]bool{}
	for seq := uint64(0); ; seq++ {
		// Each read has its own time: a long queue read over a slow cluster must not run
		// the whole look out of time, or nothing would ever expire.
		rctx, cancel := context.WithTimeout(ctx, attemptTimeout)
		m, err := s.queue.GetMsg(rctx, seq, jetstream.WithGetMsgSubject(queuePrefix+">"))
		cancel()
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("broker: scan queue: %w", storageErr(err))
		}
		seq = m.Sequence
		if !m.Time.Before(t) {
			if len(old) == 0 {
				return nil, nil
			}
			young[m.Header.Get(HeaderJobID)] = true
			continue
		}
		old = append(old, pendingOf(m))
	}
	out := old[:0]
	for _, p := range old {
		if !young[p.JobID] {
			out = append(out, p)
		}
	}
	return out, nil
}
