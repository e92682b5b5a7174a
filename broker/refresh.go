package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Refresh rewrites the record of running job id, unchanged, when its last write is older
// than half the job TTL. The bucket's TTL is its stream's MaxAge, which ages every
// revision from its own write: a job that runs longer than the TTL would otherwise lose
// its record, and with it its result. The rewrite is byte-for-byte the record it replaces
// (same state, same "at"), written only at the revision read, so it can never undo a
// concurrent write. It is re-published like any write: watchers see the same state again.
// It reports whether it wrote; a finished job is never rewritten.
func (s *Store) Refresh(ctx context.Context, id string) (bool, error) {
	if err := ValidateID(id); err != nil {
		return false, err
	}
	e, err := s.kv.Get(ctx, jobKey(id))
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return false, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return false, fmt.Errorf("broker: refresh %s: %w", id, err)
	}
	if s.Now().Sub(e.Created()) < s.cfg.JobTTL/2 {
		return false, nil
	}
	j, err := DecodeJob(e.Value())
	if err != nil {
		return false, err
	}
	if j.State.Terminal() {
		return false, nil
	}
	if _, err := s.kv.Update(ctx, jobKey(id), e.Value(), e.Revision()); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			return false, nil // written meanwhile: fresh anyway
		}
		return false, fmt.Errorf("broker: refresh %s: %w", id, storageErr(err))
	}
	return true, nil
}

// RefreshEvery is how often a running job's record should be offered to Refresh: often
// enough that a record is rewritten well before it is a TTL old.
func (s *Store) RefreshEvery() time.Duration {
	return max(s.cfg.JobTTL/4, 10*time.Millisecond)
}
