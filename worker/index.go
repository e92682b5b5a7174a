package worker

import (
	"context"
	"sync"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// fullRefresh is how often every queue head is re-read, correcting heads that the counts
// did not show stale (a head removed and a new job on the same queue between two picks
// leave its count as it was; a deletion in this process marks its queue at once,
// Store.OnQueueRemoved, and a head's job ending anywhere, its state event, ended). A
// stale head is only ever too old: it can make a queue look more urgent until then,
// never hide a job.
const fullRefresh = 30 * time.Second

// maxEnded is how many ended jobs (and deleted messages) the index keeps between two
// looks; more, and the next look re-reads every head instead (an idle worker looks
// seldom, the other Macs' jobs end meanwhile).
const maxEnded = 1024

// maxAppendScan is how many messages stored since the last look a selection reads one by
// one to learn their queues; more, and it asks for every queue's count instead.
const maxAppendScan = 8

// queueIndex caches the oldest pending job of every queue (queue key), so one selection
// costs one stream info request plus a head lookup only for queues whose head may have
// moved: new queues, queues whose count fell, and the queue whose job the worker just
// finished.
//
// The info request is the small, fixed-size stream state when it proves that nothing but
// the worker's own confirmed removals (and a few messages it then reads) changed the queue
// since the last look: the last sequence counts every message stored, the size every
// message stored less every removed. Anything else (a cancel elsewhere, MaxAge, a removal
// not yet confirmed, many new messages) breaks the sum, and the selection asks for every
// queue's count as before, whose answer grows with the number of queues.
type queueIndex struct {
	store    *broker.Store
	heads    map[string]head
	counts   map[string]uint64
	lastFull time.Time
	// state is the queue stream's state at the last look, removals the worker's own
	// removals since then; known is false when the next look must count every queue.
	state broker.QueueState
	known bool
	// counted is how many looks counted every queue (for tests).
	counted int

	mu       sync.Mutex // dirty and removals are touched from other goroutines too
	dirty    map[string]bool
	removals []removal
	inflight int // removals under way
	// deleted are queue messages this process deleted by sequence outside the worker's
	// own removals (a cancel of a waiting job, Store.OnQueueRemoved) since the last look.
	deleted []uint64
	// ended are the jobs whose end (done, failed, canceled) was announced since the last
	// look, or whose message still headed its queue at it; overflow is set when more than
	// maxEnded were announced.
	ended    map[string]bool
	overflow bool
	epoch    uint64 // counts the starts and ends of removals, to see one during a look
}

func newQueueIndex(st *broker.Store) *queueIndex {
	return &queueIndex{store: st, heads: map[string]head{}, counts: map[string]uint64{}, dirty: map[string]bool{}, ended: map[string]bool{}}
}

// touch marks a queue whose head may have changed (its job was finished).
func (q *queueIndex) touch(token string) {
	q.mu.Lock()
	q.dirty[token] = true
	q.mu.Unlock()
}

// removal is one queue message the worker removed.
type removal struct {
	token string
	seq   uint64
}

// removing is to be called before the worker removes queue message seq of queue token in a way
// the server confirms (a double ack); done reports whether it did. A look at the queue
// while a removal is under way cannot tell whether the state it read holds it, so it
// counts every queue; a confirmed removal is part of any state read after.
func (q *queueIndex) removing(token string, seq uint64) (done func(ok bool)) {
	q.mu.Lock()
	q.inflight++
	q.epoch++
	q.mu.Unlock()
	return func(ok bool) {
		q.mu.Lock()
		q.inflight--
		q.epoch++
		q.dirty[token] = true
		switch {
		case !ok:
		case len(q.removals) >= maxEnded:
			// As many removals between two looks (an idle worker that skipped its looks
			// after many jobs, Worker.lookNeeded) make the next look count every queue.
			q.removals, q.overflow = nil, true
		default:
			q.removals = append(q.removals, removal{token, seq})
		}
		q.mu.Unlock()
	}
}

// confirmed reports whether the removal of queue message seq was confirmed since the last
// look: the message is gone.
func (q *queueIndex) confirmed(seq uint64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, r := range q.removals {
		if r.seq == seq {
			return true
		}
	}
	return false
}

// removed notes queue message seq deleted by this process (Store.OnQueueRemoved). A
// head it was is stale: when a job was queued on the same queue meanwhile, the queue's
// count is as it was, and the head, never read again until the full refresh, would lend
// the canceled job's age to the job behind it (its class starved, its runner due).
func (q *queueIndex) removed(seq uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.overflow {
		return
	}
	if len(q.deleted) >= maxEnded {
		// As many deletions between two looks (a purge of a program's jobs, an idle
		// worker's long wait) make the next look read every head instead.
		q.deleted, q.overflow = nil, true
		return
	}
	q.deleted = append(q.deleted, seq)
}

// ended notes job id's end, announced by its state event (Job events reach every
// foreman). On a shared NATS a job that heads a queue may end through another process: a
// cancel of a waiting job through another foreman's gateway, a job another Mac ran. Its
// message leaves the queue with no deletion here to mark it (OnQueueRemoved), and with a
// job queued on the same queue meanwhile the queue's count is as it was: the ended job's
// stamp stood for the next one's until the full refresh. It does not block.
func (q *queueIndex) jobEnded(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.overflow {
		return
	}
	if len(q.ended) >= maxEnded {
		clear(q.ended)
		q.overflow = true
		return
	}
	q.ended[id] = true
}

// take hands over the queues marked since the last look, the queues whose head was
// deleted, or whose head's job ended, among them; full is set when the ended jobs were
// too many to keep (every head is to be read again). settled is false while a removal is
// under way.
func (q *queueIndex) take() (dirty map[string]bool, removals []removal, endedHeads map[string]string, epoch uint64, settled, full bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	dirty, removals = q.dirty, q.removals
	q.dirty, q.removals = map[string]bool{}, nil
	full, q.overflow = q.overflow, false
	if len(q.ended) > 0 {
		// Each ended job that heads a queue marks it; the others are forgotten: a job's
		// message leaves the queue as (or just after) it ends, and the index reads only
		// heads. One still heading its queue after the look (its end stored, its message
		// not yet removed) is noted again then (keepEnded).
		for token, h := range q.heads {
			if h.JobID != "" && q.ended[h.JobID] {
				dirty[token] = true
				if endedHeads == nil {
					endedHeads = map[string]string{}
				}
				endedHeads[token] = h.JobID
			}
		}
		clear(q.ended)
	}
	if len(q.deleted) > 0 {
		gone := make(map[uint64]bool, len(q.deleted))
		for _, seq := range q.deleted {
			gone[seq] = true
		}
		q.deleted = nil
		for token, h := range q.heads {
			if gone[h.Seq] {
				dirty[token] = true
			}
		}
	}
	return dirty, removals, endedHeads, q.epoch, q.inflight == 0, full
}

// keepEnded notes again each ended job (by queue, endedHeads of take) whose message still
// heads its queue after a look: its removal comes next (a cancel writes the record first,
// a run's end is stored before its ack), and the look after it must read the queue again.
// A message that stays (a removal that failed, one the worker drops when it meets it)
// costs one read per look.
func (q *queueIndex) keepEnded(endedHeads map[string]string) {
	if len(endedHeads) == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for token, id := range endedHeads {
		if h, ok := q.heads[token]; ok && h.JobID == id && !q.overflow {
			q.ended[id] = true
		}
	}
}

// giveBack marks again what a failed look took.
func (q *queueIndex) giveBack(dirty map[string]bool) {
	q.mu.Lock()
	for t := range dirty {
		q.dirty[t] = true
	}
	q.mu.Unlock()
}

func (q *queueIndex) epochNow() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.epoch
}

// hasOther reports whether the last look found jobs in a queue besides token's that runs
// says this worker runs (not another Mac's model).
func (q *queueIndex) hasOther(token string, runs func(token string) bool) bool {
	for t := range q.heads {
		if t != token && runs(t) {
			return true
		}
	}
	return false
}

// refresh brings the heads up to date and returns them.
func (q *queueIndex) refresh(ctx context.Context, now time.Time) ([]head, error) {
	dirty, removals, endedHeads, epoch, settled, overflow := q.take()
	full := !q.known || now.Sub(q.lastFull) > fullRefresh || overflow
	if !full && settled {
		ok, err := q.refreshQuick(ctx, dirty, removals, epoch)
		if err != nil {
			q.known = false // the removals taken are lost
			q.giveBack(dirty)
			return nil, err
		}
		if ok {
			q.keepEnded(endedHeads)
			return q.list(), nil
		}
	}
	if err := q.refreshAll(ctx, now, full, dirty, epoch, settled); err != nil {
		q.giveBack(dirty)
		return nil, err
	}
	q.keepEnded(endedHeads)
	return q.list(), nil
}

// refreshQuick brings the heads up to date from the stream state alone when the sum holds
// (see queueIndex); ok is false when it does not and every queue must be counted.
func (q *queueIndex) refreshQuick(ctx context.Context, dirty map[string]bool, removals []removal, epoch uint64) (ok bool, _ error) {
	st, err := q.store.QueueState(ctx)
	if err != nil {
		return false, err
	}
	if q.epochNow() != epoch {
		return false, nil // a removal started or ended during the read: is it in st?
	}
	removed := uint64(len(removals))
	if st.LastSeq < q.state.LastSeq {
		return false, nil
	}
	stored := st.LastSeq - q.state.LastSeq
	if stored > maxAppendScan || q.state.Msgs+stored != st.Msgs+removed {
		return false, nil
	}
	// The messages stored since: one on a queue without a head is that queue's head (the
	// queue was empty at the last look); one already gone was the worker's to remove.
	added := map[string]uint64{}
	for seq := q.state.LastSeq + 1; seq <= st.LastSeq; {
		p, found, err := q.store.Oldest(ctx, seq)
		if err != nil {
			return false, err
		}
		if !found || p.Seq > st.LastSeq {
			break
		}
		added[p.Token]++
		if _, known := q.heads[p.Token]; !known {
			q.heads[p.Token] = headOf(p.Token, p)
		}
		seq = p.Seq + 1
	}
	for token := range dirty {
		p, found, err := q.store.OldestOf(ctx, token)
		if err != nil {
			return false, err
		}
		if found {
			q.heads[token] = headOf(token, p)
		} else {
			delete(q.heads, token)
		}
	}
	for token, n := range added {
		q.counts[token] += n
	}
	for _, r := range removals {
		if r.seq <= q.state.LastSeq && q.counts[r.token] > 0 { // one stored since was never counted
			q.counts[r.token]--
		}
	}
	for token := range q.counts {
		if _, live := q.heads[token]; !live {
			delete(q.counts, token)
		}
	}
	q.state = st
	return true, nil
}

// refreshAll brings the heads up to date from every queue's count, re-reading the heads of
// new queues, of queues whose count fell and of the dirty ones (all of them when full).
func (q *queueIndex) refreshAll(ctx context.Context, now time.Time, full bool, dirty map[string]bool, epoch uint64, settled bool) error {
	q.counted++
	depth, st, err := q.store.DepthState(ctx)
	if err != nil {
		return err
	}
	// A removal under way during the read may or may not be in st: count every queue next
	// time rather than misjudge it.
	q.known = settled && q.epochNow() == epoch
	for token, n := range depth {
		old, known := q.counts[token]
		if !known || n < old || full || dirty[token] {
			p, ok, err := q.store.OldestOf(ctx, token)
			if err != nil {
				q.known = false
				return err
			}
			if !ok {
				delete(depth, token) // gone between the two reads
				continue
			}
			q.heads[token] = headOf(token, p)
		}
	}
	for token := range q.heads {
		if _, ok := depth[token]; !ok {
			delete(q.heads, token)
		}
	}
	q.counts = depth
	q.state = st
	if full {
		q.lastFull = now
	}
	return nil
}

// lastSeq is the queue's last sequence at the last look: every message up to it was
// stored before that look.
func (q *queueIndex) lastSeq() uint64 { return q.state.LastSeq }

func (q *queueIndex) list() []head {
	out := make([]head, 0, len(q.heads))
	for _, h := range q.heads {
		out = append(out, h)
	}
	return out
}

// headOf is the head of queue token; a key foreman does not make keeps its token as its
// runner, and the worker removes it when it comes up.
func headOf(token string, p broker.Pending) head {
	h := head{Token: token, Seq: p.Seq, Enqueued: p.Enqueued, JobID: p.JobID}
	if k, err := broker.ParseQueueKey(token); err == nil {
		h.Runner, h.Class = k.Runner(), k.Class
	}
	return h
}
