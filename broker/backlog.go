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
// info request (its range and each subject's count of messages), one read per message
// published since the last refresh, and reads from both ends of a subject that lost
// known messages until they are found (findGone). A queue stream accepts no second
// consumer that overlaps the worker's (work-queue retention), hence reads by sequence.
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
//
// What left the queue is told by counts, not by the stream's list of deleted sequences:
// that list holds every message removed behind the oldest one still queued, so one job
// waiting for hours behind normal traffic (or a loop of submits and cancels) makes it
// millions long, sent and read at each refresh. The counts are one per queue subject.
func (b *Backlog) refresh(ctx context.Context) error {
	var info *jetstream.StreamInfo
	err := b.store.retry(ctx, func(ctx context.Context) error {
		var err error
		info, err = b.store.queue.Info(ctx, jetstream.WithSubjectFilter(QueueWildcard))
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
	for seq := range b.msgs {
		if seq < st.FirstSeq {
			delete(b.msgs, seq)
		}
	}
	if err := b.readNew(ctx, st.FirstSeq, st.LastSeq); err != nil {
		return err
	}
	return b.dropGone(ctx, st.Subjects)
}

// readNew reads the messages from b.next (or first) up to last.
func (b *Backlog) readNew(ctx context.Context, first, last uint64) error {
	for seq := max(b.next, first); seq <= last; seq++ {
		m, err := b.get(ctx, seq, QueueWildcard)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return fmt.Errorf("broker: read queue message %d: %w", seq, err)
		}
		seq = m.Sequence
		if seq > last {
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
	b.next = last + 1
	return nil
}

// dropGone drops the known messages that left the queue. counts is how many messages
// each queue subject held at the info: every message then held is known (read now or
// before), so a subject known with more lost that many, and only its messages are looked
// at again. A count can come short only by a message removed between the info and its
// read; a message left known then is dropped by a later refresh, whose count misses it.
func (b *Backlog) dropGone(ctx context.Context, counts map[string]uint64) error {
	known := map[string]int{}
	for _, m := range b.msgs {
		known[m.Token]++
	}
	for token, n := range known {
		if held := int(min(counts[QueueSubject(token)], uint64(n))); n > held {
			if err := b.findGone(ctx, token, n-held); err != nil {
				return err
			}
		}
	}
	return nil
}

// findGone drops gone of token's known messages, looking from both ends until it found
// them: the worker takes a queue's oldest job, and a cancel mostly meets a recent one. At
// the old end, one read of the first message at or after the oldest known one passes over
// every known one removed before it. The reads are at most the subject's known messages.
func (b *Backlog) findGone(ctx context.Context, token string, gone int) error {
	var seqs []uint64
	for seq, m := range b.msgs {
		if m.Token == token {
			seqs = append(seqs, seq)
		}
	}
	if gone >= len(seqs) { // the subject holds none (purged, or each one left)
		for _, seq := range seqs {
			delete(b.msgs, seq)
		}
		return nil
	}
	slices.Sort(seqs)
	subject := QueueSubject(token)
	drop := func(seq uint64) { delete(b.msgs, seq); gone-- }
	lo, hi := 0, len(seqs)-1
	for gone > 0 && lo <= hi {
		m, err := b.get(ctx, seqs[lo], subject)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			for ; lo <= hi; lo++ {
				drop(seqs[lo])
			}
			return nil
		case err != nil:
			return fmt.Errorf("broker: read queue message %d: %w", seqs[lo], err)
		}
		for ; lo <= hi && seqs[lo] < m.Sequence; lo++ {
			drop(seqs[lo])
		}
		if lo <= hi && seqs[lo] == m.Sequence {
			lo++
		}
		if gone <= 0 || lo > hi {
			break
		}
		_, err = b.get(ctx, seqs[hi], "")
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			drop(seqs[hi])
		case err != nil:
			return fmt.Errorf("broker: read queue message %d: %w", seqs[hi], err)
		}
		hi--
	}
	return nil
}

// get reads the first message at or after seq on subject, or the one at seq when subject
// is empty, retried as every read of the backlog.
func (b *Backlog) get(ctx context.Context, seq uint64, subject string) (*jetstream.RawStreamMsg, error) {
	var opts []jetstream.GetMsgOpt
	if subject != "" {
		opts = append(opts, jetstream.WithGetMsgSubject(subject))
	}
	var m *jetstream.RawStreamMsg
	err := b.store.retry(ctx, func(ctx context.Context) error {
		var err error
		m, err = b.store.queue.GetMsg(ctx, seq, opts...)
		return err
	})
	return m, err
}
