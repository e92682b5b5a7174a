package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// writeRefusedFor is how long the store may refuse every write before WriteHealth says
// so: far longer than a leader election (a few seconds), which is waited through.
const writeRefusedFor = 30 * time.Second

// writeHealth follows whether the store takes the writes of jobs: a disk that filled up
// makes the embedded server refuse them, and one that failed a write may go on refusing
// after space comes back, until foreman restarts.
type writeHealth struct {
	mu      sync.Mutex
	since   time.Time // the first refusal since the last write the store took; zero then
	lastErr error
}

// note records the outcome of a write of a job record or queue message. Only a store that
// refuses counts (unavailable, or out of room); any other answer, an existing key or a
// revision that moved on included, is the store working.
func (h *writeHealth) note(err error, now time.Time) {
	if errors.Is(err, context.Canceled) {
		return // the caller went: no answer either way
	}
	refused := Transient(err) || errors.Is(storageErr(err), ErrStorageFull)
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case !refused:
		h.since, h.lastErr = time.Time{}, nil
	case h.since.IsZero():
		h.since, h.lastErr = now, err
	default:
		h.lastErr = err
	}
}

func (s *Store) noteWrite(err error) { s.writes.note(err, s.Now()) }

// WriteHealth reports a store that has refused every write of a job for longer than
// writeRefusedFor: submits get 503, and the worker can neither start nor end a job.
func (s *Store) WriteHealth() error {
	h := &s.writes
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.since.IsZero() {
		return nil
	}
	if d := s.Now().Sub(h.since); d >= writeRefusedFor {
		return fmt.Errorf("the job store has refused every write for %s (last: %v); is its disk full? once there is room, a store that still refuses needs foreman restarted", d.Round(time.Second), h.lastErr)
	}
	return nil
}

// ProbeWrite writes this process's probe key (probe.<boot id>) in the jobs bucket, where
// job records are written: a worker paused by a store that refused its writes learns
// from it that the store takes them again.
func (s *Store) ProbeWrite(ctx context.Context) error {
	_, err := s.kv.Put(ctx, "probe."+s.cfg.BootID, []byte(s.Now().UTC().Format(time.RFC3339Nano)))
	s.noteWrite(err)
	if err != nil {
		return fmt.Errorf("broker: probe write: %w", storageErr(err))
	}
	return nil
}
