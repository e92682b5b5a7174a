package broker

import (
	"context"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// bucketKeys lists the keys of KV bucket that match pattern (a key with NATS wildcards:
// "job.*", "whq.>"), in no order, deleted ones included (a read of one finds nothing, as
// of a key deleted after any listing). It reads them as the subjects of the bucket's
// stream, which the server reports in one answer (pages of up to 100,000), not with the
// KV key lister: that ordered consumer ends a listing as soon as one message's pending
// count reads 0, which writes made meanwhile cause before the initial values are
// through, and returns part of the keys (measured: about 2% of the listings of three
// keys that were being written every millisecond; nats.py fixed the same flaw in its
// watcher, nats-io/nats.py#995).
func (s *Store) bucketKeys(ctx context.Context, bucket, pattern string) ([]string, error) {
	keys, _, err := s.bucketKeysAt(ctx, bucket, pattern)
	return keys, err
}

// bucketKeysAt is bucketKeys, with the NATS server's time of the listing (zero from a
// server too old to say it): the clock that stamps each entry's Created.
func (s *Store) bucketKeysAt(ctx context.Context, bucket, pattern string) ([]string, time.Time, error) {
	prefix := "$KV." + bucket + "."
	var subjects map[string]uint64
	var at time.Time
	err := s.retry(ctx, func(ctx context.Context) error {
		st, err := s.js.Stream(ctx, "KV_"+bucket)
		if err != nil {
			return err
		}
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(prefix+pattern))
		if err != nil {
			return err
		}
		subjects, at = info.State.Subjects, info.TimeStamp
		s.noteServerTime(at)
		return nil
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	keys := make([]string, 0, len(subjects))
	for subj := range subjects {
		keys = append(keys, strings.TrimPrefix(subj, prefix))
	}
	return keys, at, nil
}
