package broker

import (
	"context"
	"errors"
	"fmt"
	"math"
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
// info request (its range and each subject's count of messages), the messages published
// since the last refresh (read in batches, readQueue), and, when a subject lost known messages, either one
// more info request with the stream's deleted sequences (when that list is short) or at
// most readsPerRefresh reads from both ends of the subject (findGone), carried on by the
// next refresh. A queue stream accepts no second consumer that overlaps the worker's
// (work-queue retention), hence reads by sequence.
type Backlog struct {
	store *Store

	mu    sync.Mutex
	msgs  map[uint64]QueuedMessage
	next  uint64 // the lowest sequence not read yet
	stamp time.Time
	// scans are the searches (findGone) a refresh left unfinished, by queue token.
	scans map[string]scan
	// maxDeleted is the most deleted sequences a refresh asks NATS to list.
	maxDeleted int
	// onRead, when set (tests), is called after each message read.
	onRead func(seq uint64)
}

// scan is how far findGone got in a subject: its known messages at or below lo, and those
// from hi up to top (the newest known when the search started), were held when read. The
// next refresh reads the old end again from the oldest known message (one read passes
// over what the worker took since) and, at the new end, every message known above top
// (one submitted since may have been canceled since) before going on past hi.
type scan struct{ lo, hi, top uint64 }

const (
	// maxDeletedList is the longest list of deleted sequences a refresh asks for: about
	// 20 KB of JSON. A longer one (one job waiting for hours behind normal traffic makes
	// it millions long) is not asked for: the known messages are read again instead.
	maxDeletedList = 2048
	// readsPerRefresh bounds the reads a refresh makes to find what left (findGone), so
	// a cancel in the middle of a deep subject costs a few refreshes, not one long one
	// under the lock every view waits on.
	readsPerRefresh = 32
)

// Backlog returns an empty backlog of the store's queue; Refresh fills it.
func (s *Store) Backlog() *Backlog {
	return &Backlog{store: s, msgs: map[uint64]QueuedMessage{}, next: 1, scans: map[string]scan{}, maxDeleted: maxDeletedList}
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
// What left the queue is told by counts first, not by the stream's list of deleted
// sequences: that list holds every message removed behind the oldest one still queued,
// so one job waiting for hours behind normal traffic (or a loop of submits and cancels)
// makes it millions long. The counts are one per queue subject. The list is asked for
// only when a count says a known message left and the list is short (dropDeleted);
// otherwise the subject's known messages are read again, a bounded number per refresh
// (findGone), so what left may be shown a few refreshes longer.
func (b *Backlog) refresh(ctx context.Context) error {
	info, err := b.info(ctx, jetstream.WithSubjectFilter(QueueWildcard))
	if err != nil {
		return err
	}
	st := info.State
	if st.Msgs == 0 {
		clear(b.msgs)
		clear(b.scans)
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
	over := b.over(st.Subjects)
	for token := range b.scans {
		if _, ok := over[token]; !ok {
			delete(b.scans, token)
		}
	}
	switch {
	case len(over) == 0:
		return nil
	case st.NumDeleted <= b.maxDeleted:
		return b.dropDeleted(ctx)
	}
	budget := readsPerRefresh
	for token, gone := range over {
		if err := b.findGone(ctx, token, gone, &budget); err != nil {
			return err
		}
	}
	return nil
}

// info reads the queue stream's info, retried as every read of the backlog.
func (b *Backlog) info(ctx context.Context, opts ...jetstream.StreamInfoOpt) (*jetstream.StreamInfo, error) {
	var info *jetstream.StreamInfo
	err := b.store.retry(ctx, func(ctx context.Context) error {
		var err error
		info, err = b.store.queue.Info(ctx, opts...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("broker: queue info: %w", err)
	}
	return info, nil
}

// readNew reads the messages from b.next (or first) up to last, in batches (readQueue).
// b.next is then past the last message read, or past last on the embedded server.
func (b *Backlog) readNew(ctx context.Context, first, last uint64) error {
	if from := max(b.next, first); from <= last {
		err := b.store.readQueue(ctx, from, last, func(m *jetstream.RawStreamMsg) error {
			seq := m.Sequence
			token, _ := TokenFromSubject(m.Subject)
			b.msgs[seq] = QueuedMessage{
				Token: token, Seq: seq, Enqueued: m.Time,
				JobID: m.Header.Get(HeaderJobID), Model: m.Header.Get(HeaderModel), Kind: Kind(m.Header.Get(HeaderKind)),
				Priority: Priority(m.Header.Get(HeaderPriority)).OrNormal(), Program: m.Header.Get(HeaderProgram),
			}
			// Kept per message: a refresh cut by the caller's deadline goes on from here
			// next time, so a large queue's first read finishes over several refreshes.
			b.next = seq + 1
			if b.onRead != nil {
				b.onRead(seq)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("broker: read queue messages from %d: %w", from, err)
		}
	}
	// A read that ended short of last met messages removed since the info (a job run or
	// canceled), or, on a store that may be replicated, a replica behind the stream's
	// leader, which answers the direct gets as any replica does: it has not stored the
	// newest messages yet, and says there are none. Passed over, those were never read
	// again, and their jobs stayed out of every view (GET /queue, a job's position) until
	// a restart. There the next refresh reads on from the last message read.
	if !b.store.mayBeReplicated() {
		b.next = last + 1
	}
	return nil
}

// over says how many known messages each subject lost. counts is how many messages each
// queue subject held at the info: every message then held is known (read now or before),
// so a subject known with more lost that many. A count can come short only by a message
// removed between the info and its read; a message left known then is dropped by a later
// refresh, whose count misses it.
func (b *Backlog) over(counts map[string]uint64) map[string]int {
	known := map[string]int{}
	for _, m := range b.msgs {
		known[m.Token]++
	}
	over := map[string]int{}
	for token, n := range known {
		if held := int(min(counts[QueueSubject(token)], uint64(n))); n > held {
			over[token] = n - held
		}
	}
	return over
}

// dropDeleted drops the known messages the stream lists as deleted or that are older than
// its first one: one request, the list short (the info before it said so; only what was
// removed in between adds to it). Every search is done with.
func (b *Backlog) dropDeleted(ctx context.Context) error {
	info, err := b.info(ctx, jetstream.WithDeletedDetails(true))
	if err != nil {
		return err
	}
	st := info.State
	deleted := make(map[uint64]struct{}, len(st.Deleted))
	for _, seq := range st.Deleted {
		deleted[seq] = struct{}{}
	}
	for seq := range b.msgs {
		if _, ok := deleted[seq]; ok || seq < st.FirstSeq {
			delete(b.msgs, seq)
		}
	}
	clear(b.scans)
	return nil
}

// findGone drops gone of token's known messages, looking from both ends until it found
// them: the worker takes a queue's oldest job, and a cancel mostly meets a recent one. At
// the old end, one read of the first message at or after the oldest known one passes over
// every known one removed before it. It makes at most *budget reads (and takes them off):
// a search not done is kept in b.scans and goes on from where it stopped next refresh,
// first reading the old end again from the oldest known message (one read passes over
// what the worker took meanwhile, the stream's first sequence held by another subject)
// and, at the new end, the messages known since (one canceled meanwhile). A search that
// met in the middle with messages still to find (one it passed left since) starts again
// from both ends.
func (b *Backlog) findGone(ctx context.Context, token string, gone int, budget *int) error {
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
		delete(b.scans, token)
		return nil
	}
	slices.Sort(seqs)
	// The search reads seqs[lo] (the first at or after it on the subject) and seqs[hi],
	// moving them toward each other, except seqs[skipLo:lo] (found held, passed over
	// after the first read at the old end) and seqs[blockLo:blockHi+1] (found held, up to
	// top: passed over at the new end once it read what came after).
	lo, hi := 0, len(seqs)-1
	skipLo, blockLo, blockHi, top := 0, -1, -1, seqs[len(seqs)-1]
	if s, ok := b.scans[token]; ok {
		if *budget <= 0 {
			return nil // no read left this refresh: the search goes on at the next
		}
		midLo, _ := slices.BinarySearch(seqs, s.lo+1)
		midHi, _ := slices.BinarySearch(seqs, s.hi)
		if midLo < midHi { // a middle still to search; else start again from both ends
			skipLo, top = midLo, s.top
			after := len(seqs) // the first known above top
			if top != math.MaxUint64 {
				after, _ = slices.BinarySearch(seqs, top+1)
			}
			switch {
			case after == len(seqs):
				hi = midHi - 1
			case midHi < after:
				blockLo, blockHi = midHi, after-1
			}
		}
	}
	// keep records where the search stopped: seqs[:lo] and seqs[hi+1:] up to top were
	// found held (seqs[blockLo:] up to top, when the new end did not pass the block).
	keep := func() {
		if gone <= 0 {
			delete(b.scans, token)
			return
		}
		s := scan{hi: math.MaxUint64, top: top}
		if lo > 0 {
			s.lo = seqs[lo-1]
		}
		switch {
		case blockLo >= 0:
			s.hi = seqs[blockLo]
		case hi+1 < len(seqs):
			s.hi = seqs[hi+1]
		}
		b.scans[token] = s
	}
	defer keep()
	subject := QueueSubject(token)
	drop := func(seq uint64) { delete(b.msgs, seq); gone-- }
	for gone > 0 && lo <= hi && *budget > 0 {
		*budget--
		m, err := b.get(ctx, seqs[lo], subject)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound): // none left at or after seqs[lo]
			for ; lo < len(seqs); lo++ {
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
		lo, skipLo = max(lo, skipLo), 0
		if blockLo >= 0 && lo >= blockLo { // the old end passed into what the new end found held
			lo, blockLo = max(lo, blockHi+1), -1
		}
		if gone <= 0 || lo > hi || *budget <= 0 {
			break
		}
		*budget--
		_, err = b.get(ctx, seqs[hi], "")
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			drop(seqs[hi])
		case err != nil:
			return fmt.Errorf("broker: read queue message %d: %w", seqs[hi], err)
		}
		if hi--; blockLo >= 0 && hi <= blockHi { // what came after read: on past the block
			hi, blockLo = blockLo-1, -1
		}
	}
	return nil
}

// get reads the first message at or after seq on subject, or the one at seq when subject
// is empty, retried as every read of the backlog. On a store that may be replicated it
// asks the stream's leader: any replica answers a direct get, and one behind the leader
// says "not found" of the newest messages, which it has not stored yet; findGone then
// dropped known jobs still waiting, never to be read again (out of GET /queue, without a
// position, until a restart). Only the message's subject, sequence and time are sure to
// be filled in.
func (b *Backlog) get(ctx context.Context, seq uint64, subject string) (*jetstream.RawStreamMsg, error) {
	var m *jetstream.RawStreamMsg
	err := b.store.retry(ctx, func(ctx context.Context) error {
		if b.store.mayBeReplicated() {
			sm, err := b.store.leaderMsg(ctx, QueueStream, msgGet{Seq: seq, NextFor: subject})
			if err == nil {
				m = &jetstream.RawStreamMsg{Subject: sm.Subject, Sequence: sm.Seq, Time: sm.Time}
			}
			return err
		}
		var opts []jetstream.GetMsgOpt
		if subject != "" {
			opts = append(opts, jetstream.WithGetMsgSubject(subject))
		}
		var err error
		m, err = b.store.queue.GetMsg(ctx, seq, opts...)
		return err
	})
	return m, err
}
