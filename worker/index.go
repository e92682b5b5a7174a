package worker

import (
	"context"
	"sync"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// fullRefresh is how often every model's queue head is re-read, correcting heads that a
// cancel elsewhere made stale (a stale head is only ever too old: it can make a model look
// more urgent until then, never hide a job).
const fullRefresh = 30 * time.Second

// queueIndex caches the oldest pending job of every queue (queue key), so one selection
// costs one stream info request (per-subject counts, independent of the queue depth) plus
// a head lookup only for queues whose head may have moved: new queues, queues whose count
// fell, and the queue whose job the worker just finished.
type queueIndex struct {
	store    *broker.Store
	heads    map[string]head
	counts   map[string]uint64
	lastFull time.Time

	mu    sync.Mutex // dirty is touched from the advisory handler too
	dirty map[string]bool
}

func newQueueIndex(st *broker.Store) *queueIndex {
	return &queueIndex{store: st, heads: map[string]head{}, counts: map[string]uint64{}, dirty: map[string]bool{}}
}

// touch marks a queue whose head may have changed (its job was finished).
func (q *queueIndex) touch(token string) {
	q.mu.Lock()
	q.dirty[token] = true
	q.mu.Unlock()
}

// refresh brings the heads up to date and returns them.
func (q *queueIndex) refresh(ctx context.Context, now time.Time) ([]head, error) {
	depth, err := q.store.DepthByKey(ctx)
	if err != nil {
		return nil, err
	}
	full := now.Sub(q.lastFull) > fullRefresh
	q.mu.Lock()
	dirty := q.dirty
	q.dirty = map[string]bool{}
	q.mu.Unlock()
	for token, n := range depth {
		old, known := q.counts[token]
		if !known || n < old || full || dirty[token] {
			p, ok, err := q.store.OldestOf(ctx, token)
			if err != nil {
				for t := range dirty {
					q.touch(t) // look again next time
				}
				q.touch(token)
				return nil, err
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
	if full {
		q.lastFull = now
	}
	out := make([]head, 0, len(q.heads))
	for _, h := range q.heads {
		out = append(out, h)
	}
	return out, nil
}

// headOf is the head of queue token; a key foreman does not make keeps its token as its
// runner, and the worker removes it when it comes up.
func headOf(token string, p broker.Pending) head {
	h := head{Token: token, Seq: p.Seq, Enqueued: p.Enqueued}
	if k, err := broker.ParseQueueKey(token); err == nil {
		h.Runner, h.Class = k.Runner(), k.Class
	}
	return h
}
