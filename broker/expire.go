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
func (s *Store) ExpireEvery() time.Duration {
	return min(max(s.cfg.JobTTL/8, 10*time.Millisecond), time.Minute)
}

// StaleBefore is the time before which a job still waiting in the queue has waited too
// long: two ExpireEvery short of a job TTL ago, so that a look made every ExpireEvery
// ends it before JetStream drops it at the TTL.
func (s *Store) StaleBefore() time.Time {
	return s.Now().Add(-(s.cfg.JobTTL - 2*s.ExpireEvery()))
}

// ExpiredError is the Error of a job ended because it waited in the queue for ttl.
func ExpiredError(ttl time.Duration) string {
	return fmt.Sprintf("expired: waited in the queue for the job TTL (%s) without starting", ttl)
}

// Stale returns the queue messages stored before t, oldest first. The queue holds its
// messages in the order they were stored, so the scan ends at the first one stored at
// or after t and costs one read when none is stale. A message of a running job is among
// them while its job runs: the caller decides by the record.
func (s *Store) Stale(ctx context.Context, t time.Time) ([]Pending, error) {
	var out []Pending
	for seq := uint64(0); ; seq++ {
		m, err := s.queue.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(queuePrefix+">"))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("broker: scan queue: %w", storageErr(err))
		}
		if !m.Time.Before(t) {
			return out, nil
		}
		seq = m.Sequence
		out = append(out, pendingOf(m))
	}
}
