package broker

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// QueueState is the size and last sequence of the queue stream. Between two reads the last
// sequence grows by one for every message stored, and the size by that less every message
// removed; so two states tell whether the queue changed by anything but known removals.
type QueueState struct {
	Msgs    uint64
	LastSeq uint64
}

// QueueState reads the queue stream's state alone: a fixed-size answer, unlike the
// per-subject counts of DepthByKey, which grow with the number of queues.
func (s *Store) QueueState(ctx context.Context) (QueueState, error) {
	info, err := s.queue.Info(ctx)
	if err != nil {
		return QueueState{}, fmt.Errorf("broker: queue info: %w", err)
	}
	s.noteServerTime(info.TimeStamp)
	return QueueState{Msgs: info.State.Msgs, LastSeq: info.State.LastSeq}, nil
}

// DepthState is DepthByKey together with the queue state the counts were read at (one
// answer of the server).
func (s *Store) DepthState(ctx context.Context) (map[string]uint64, QueueState, error) {
	info, err := s.queue.Info(ctx, jetstream.WithSubjectFilter(QueueWildcard))
	if err != nil {
		return nil, QueueState{}, fmt.Errorf("broker: queue info: %w", err)
	}
	s.noteServerTime(info.TimeStamp)
	out := make(map[string]uint64, len(info.State.Subjects))
	for subj, n := range info.State.Subjects {
		if token, ok := TokenFromSubject(subj); ok {
			out[token] = n
		}
	}
	return out, QueueState{Msgs: info.State.Msgs, LastSeq: info.State.LastSeq}, nil
}
