package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// QueuedMessage is one message in the queue as its headers describe it: a job waiting,
// retrying or running (a job's message leaves the queue only when the job ends).
type QueuedMessage struct {
	Token    string // queue key (QueueKey.String)
	Seq      uint64
	Enqueued time.Time
	JobID    string
	Model    string
	Kind     Kind
	Priority Priority
	Program  string
}

// Backlog keeps a copy of the queue's message headers in memory, so a view of a queue of
// thousands of jobs costs no read per job. A refresh reads only what changed: one stream
// info request (its range and the sequences deleted inside it) and one read per message
// published since the last refresh. A queue stream accepts no second consumer that
// overlaps the worker's (work-queue retention), hence reads by sequence.
type Backlog struct {
	store *Store

	mu    sync.Mutex
	msgs  map[uint64]QueuedMessage
	next  uint64 // the lowest sequence not read yet
	stamp time.Time
	// onRead, when set (tests), is called after each message read.
	onRead func(seq uint64)
}

// Backlog returns an empty backlog of the store's queue; Refresh fills it.
func (s *Store) Backlog() *Backlog {
	return &Backlog{store: s, msgs: map[uint64]QueuedMessage{}, next: 1}
}

// Refresh brings the copy up to date unless it is younger than maxAge, and returns the
// messages oldest first (a fresh slice the caller may keep).
func (b *Backlog) Refresh(ctx context.Context, maxAge time.Duration) ([]QueuedMessage, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stamp.IsZero() || time.Since(b.stamp) >= maxAge {
		if err := b.refresh(ctx); err != nil {
			return nil, err
		}
		b.stamp = time.Now()
	}
	out := make([]QueuedMessage, 0, len(b.msgs))
	for _, m := range b.msgs {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b QueuedMessage) int {
		switch {
		case a.Seq < b.Seq:
			return -1
		case a.Seq > b.Seq:
			return 1
		}
		return 0
	})
	return out, nil
}

// refresh reads what changed in the queue. Each read is retried as a job record's is,
// so a store that does not answer fails it with ErrUnavailable (the gateway's 503) within
// the retry window.
func (b *Backlog) refresh(ctx context.Context) error {
	var info *jetstream.StreamInfo
	err := b.store.retry(ctx, func(ctx context.Context) error {
		var err error
		info, err = b.store.queue.Info(ctx, jetstream.WithDeletedDetails(true))
		return err
	})
	if err != nil {
		return fmt.Errorf("broker: queue info: %w", err)
	}
	st := info.State
	if st.Msgs == 0 {
		clear(b.msgs)
		b.next = st.LastSeq + 1
		return nil
	}
	deleted := make(map[uint64]bool, len(st.Deleted))
	for _, seq := range st.Deleted {
		deleted[seq] = true
	}
	for seq := range b.msgs {
		if seq < st.FirstSeq || deleted[seq] {
			delete(b.msgs, seq)
		}
	}
	for seq := max(b.next, st.FirstSeq); seq <= st.LastSeq; seq++ {
		var m *jetstream.RawStreamMsg
		err := b.store.retry(ctx, func(ctx context.Context) error {
			var err error
			m, err = b.store.queue.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(QueueWildcard))
			return err
		})
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return fmt.Errorf("broker: read queue message %d: %w", seq, err)
		}
		seq = m.Sequence
		if seq > st.LastSeq {
			break // published after the info: the next refresh reads it with its peers
		}
		token, _ := TokenFromSubject(m.Subject)
		b.msgs[seq] = QueuedMessage{
			Token: token, Seq: seq, Enqueued: m.Time,
			JobID: m.Header.Get(HeaderJobID), Model: m.Header.Get(HeaderModel), Kind: Kind(m.Header.Get(HeaderKind)),
			Priority: Priority(m.Header.Get(HeaderPriority)).OrNormal(), Program: m.Header.Get(HeaderProgram),
		}
		// Kept per message: a refresh cut by the caller's deadline goes on from here next
		// time, so a large queue's first read finishes over several refreshes.
		b.next = seq + 1
		if b.onRead != nil {
			b.onRead(seq)
		}
	}
	b.next = st.LastSeq + 1
	return nil
}
