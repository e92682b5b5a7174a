package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/nats-io/nats.go"
)

// queueAll matches every queue subject, of a model or not.
const queueAll = queuePrefix + ">"

// maxDeliveriesSubject is JetStream's advisory for a queue message its consumer will not
// deliver again (MaxDeliver reached). In a work queue such a message would stay forever.
const maxDeliveriesSubject = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + QueueStream + ".*"

// Published is a message seen published to a queue subject: the job it queues, as its
// publisher sent it. It is a wake-up for an idle worker, not a lease: it may never be
// stored (a full queue refuses it), and only the lease's copy is checked.
type Published struct {
	Token string // the queue subject's token (ParseQueueKey)
	JobID string
	Kind  Kind
	// Body is the request body the message carries; nil when it is stored apart
	// (HeaderBodyRef) or the message is a requeue.
	Body []byte
	// Sync says a caller waits on the answer: set on a submit's direct announcement only
	// (the queue message does not carry it).
	Sync bool
	// Requeued says the message is a job's new one (Requeue, HeaderRequeued): a job taken
	// before, by this foreman or another, that waits again.
	Requeued bool
	// Created, on a submit's own announcement, waits for the create of the job's record
	// and returns the record as that create stored it and its revision, with no read of
	// the store (the worker woken by the announcement needs it before the job's start);
	// ok is false when the create failed or ctx ended first, and the record is then to
	// be read. Nil on every other announcement and on the copies NATS delivers.
	Created func(ctx context.Context) (j *Job, rev uint64, ok bool)
}

// OnQueued calls fn for every message published to a queue subject. fn runs on the
// connection's dispatcher, or on the goroutine of a submit of this Store, and must not
// block. stop ends the calls.
//
// A submit of this Store hands fn its message directly, before it publishes it (ADR-0034),
// and the copy NATS delivers comes after it too: a wake-up is a hint (a worker skips a job
// it took already), and neither copy may be dropped. Only the NATS copies come in the
// order the stream stores the messages: a message announced first may be stored after a
// later one, and its NATS copy is then the wake-up for it.
func (s *Store) OnQueued(fn func(Published)) (stop func(), err error) {
	h := &hook[Published]{fn: fn}
	sub, err := s.nc.Subscribe(queueAll, func(m *nats.Msg) {
		token, ok := TokenFromSubject(m.Subject)
		if !ok {
			return
		}
		p := Published{Token: token, JobID: m.Header.Get(HeaderJobID), Kind: Kind(m.Header.Get(HeaderKind)),
			Requeued: m.Header.Get(HeaderRequeued) != ""}
		if m.Header.Get(HeaderBodyRef) == "" && !p.Requeued {
			p.Body = m.Data
		}
		fn(p)
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to queue: %w", err)
	}
	s.hooks.add(h)
	return func() {
		s.hooks.remove(h)
		_ = sub.Unsubscribe()
	}, nil
}

// hook is one callback of a hooks list.
type hook[T any] struct{ fn func(T) }

// hooks are a Store's callbacks of one kind (OnQueued's, OnQueueRemoved's). A list is
// replaced, never changed in place, so announce calls a copy taken under the lock.
type hooks[T any] struct {
	mu   sync.Mutex
	list []*hook[T]
}

func (q *hooks[T]) add(h *hook[T]) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.list = append(slices.Clone(q.list), h)
}

func (q *hooks[T]) remove(h *hook[T]) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.list = slices.DeleteFunc(slices.Clone(q.list), func(g *hook[T]) bool { return g == h })
}

// any reports whether there are callbacks.
func (q *hooks[T]) any() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.list) > 0
}

// announce hands v to the callbacks (OnQueued's: ahead of its publish).
func (q *hooks[T]) announce(v T) {
	q.mu.Lock()
	list := q.list
	q.mu.Unlock()
	for _, h := range list {
		h.fn(v)
	}
}

// OnQueueRemoved calls fn with the sequence of every queue message this Store deletes by
// sequence (a cancel of a waiting job, a sync job whose caller left, an ended job's
// message), once the server has deleted it and before the call that deleted it returns.
// A work queue's counts do not show such a removal when a job is queued on the same
// subject meanwhile: the worker's index learns here that a head it knows is gone. fn
// must not block. stop ends the calls.
func (s *Store) OnQueueRemoved(fn func(seq uint64)) (stop func()) {
	h := &hook[uint64]{fn: fn}
	s.removedHooks.add(h)
	return func() { s.removedHooks.remove(h) }
}

// OnJobChange calls fn with every state event of job id, in order. Events that do not
// decode are skipped. fn runs on the connection's dispatcher, must not block and must not
// modify the job (other callbacks get the same). stop ends the calls.
func (s *Store) OnJobChange(id string, fn func(*Job)) (stop func(), err error) {
	return s.states.add(s.nc, id, fn)
}

// JobWatch yields the state events of one job; see Store.WatchJob.
type JobWatch struct{ sub *nats.Subscription }

// WatchJob starts taking job id's state events; once it returns the server has the
// subscription, so a write after it (or a Get after it) cannot slip by. Stop it.
func (s *Store) WatchJob(ctx context.Context, id string) (*JobWatch, error) {
	sub, err := s.nc.SubscribeSync(StateSubject(id))
	if err != nil {
		return nil, err
	}
	if err := s.nc.FlushWithContext(ctx); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	return &JobWatch{sub: sub}, nil
}

// Next waits for the job's next state event that decodes, until ctx ends.
func (w *JobWatch) Next(ctx context.Context) (*Job, error) {
	for {
		m, err := w.sub.NextMsgWithContext(ctx)
		if err != nil {
			return nil, err
		}
		if j, err := DecodeJob(m.Data); err == nil {
			return j, nil
		}
	}
}

// Stop ends the watch.
func (w *JobWatch) Stop() { _ = w.sub.Unsubscribe() }

// ErrBadAdvisory is a delivery-limit advisory that does not name a queue message.
var ErrBadAdvisory = errors.New("bad delivery-limit advisory")

// OnDeliveryLimit calls fn for every queue message JetStream gives up on (its consumer's
// MaxDeliver reached), with its stream sequence and delivery count, or with an error
// wrapping ErrBadAdvisory for an advisory that names none. stop ends the calls.
func (s *Store) OnDeliveryLimit(fn func(seq, deliveries uint64, err error)) (stop func(), err error) {
	sub, err := s.nc.Subscribe(maxDeliveriesSubject, func(m *nats.Msg) {
		var adv struct {
			StreamSeq  uint64 `json:"stream_seq"`
			Deliveries uint64 `json:"deliveries"`
		}
		if err := json.Unmarshal(m.Data, &adv); err != nil || adv.StreamSeq == 0 {
			fn(0, 0, fmt.Errorf("%w: %v", ErrBadAdvisory, err))
			return
		}
		fn(adv.StreamSeq, adv.Deliveries, nil)
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to delivery advisories: %w", err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// OnJobEvents calls fn with the state event of every job (each write of a job record),
// for counters that follow all jobs. Events that do not decode (deletes) are skipped. fn
// runs on the connection's dispatcher, must not block and must not modify the job (other
// callbacks get the same). stop ends the calls.
func (s *Store) OnJobEvents(fn func(*Job)) (stop func(), err error) {
	return s.states.add(s.nc, "", fn)
}
