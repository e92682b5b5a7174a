package gateway

import (
	"strings"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// jobFeed delivers a job's stream frames and state events in the order NATS delivered
// them to this connection.
type jobFeed interface {
	Msgs() <-chan *nats.Msg
	// Dropped counts messages lost because the relay fell too far behind.
	Dropped() int
	// Overflow is closed once more than the feed's buffer waits for the client: the
	// client reads slower than the target writes and is to be cut off.
	Overflow() <-chan struct{}
}

// feedPendingMsgs and feedPendingBytes bound the subscription's own pending list, a
// backstop only: the callback never blocks, so messages wait in the feed's queue, where
// they are counted against Config.StreamBuffer. A message NATS drops shows as a stream
// gap.
const (
	feedPendingMsgs  = 1 << 20
	feedPendingBytes = 64 << 20
)

// relayStats counts what the relays did for slow clients; /metrics shows them.
type relayStats struct {
	active atomic.Int64 // relays running now
	cutOff atomic.Int64 // clients cut off for being too slow
	peak   atomic.Int64 // most bytes one feed ever held for its client
}

func (st *relayStats) notePeak(n int64) {
	for {
		p := st.peak.Load()
		if n <= p || st.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

// natsFeed is a jobFeed on one core NATS subscription. Its callback queues each message
// and a pump hands them to the relay as fast as the relay takes them, so what waits for a
// slow client is counted in one place. Past limit bytes waiting, the feed drops what
// comes next and closes Overflow: one slow client must not pin unbounded memory.
type natsFeed struct {
	sub    *nats.Subscription
	ch     chan *nats.Msg
	wake   chan struct{}
	over   chan struct{}
	done   chan struct{}
	pumped chan struct{}
	once   sync.Once
	limit  int64
	stats  *relayStats

	mu         sync.Mutex
	queue      []*nats.Msg
	buffered   int64
	overflowed bool
}

// subscribeJob subscribes to job id's stream and state subjects with ONE wildcard
// subscription: a single subscription keeps the connection's order between the two, and
// the worker contract relies on it (the final stream marker comes before the terminal
// state event). limit caps the bytes held for the relay; one message is always taken.
func subscribeJob(nc *nats.Conn, id string, limit int64, stats *relayStats) (*natsFeed, error) {
	f := &natsFeed{
		ch: make(chan *nats.Msg), wake: make(chan struct{}, 1), over: make(chan struct{}),
		done: make(chan struct{}), pumped: make(chan struct{}), limit: limit, stats: stats,
	}
	sub, err := nc.Subscribe(jobWildcard(id), f.receive)
	if err != nil {
		return nil, err
	}
	if err := sub.SetPendingLimits(feedPendingMsgs, max(feedPendingBytes, int(limit))); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	f.sub = sub
	go f.pump()
	return f, nil
}

// msgSize is what a message costs while it waits: its data, subject and headers.
func msgSize(m *nats.Msg) int64 {
	n := len(m.Data) + len(m.Subject)
	for k, vs := range m.Header {
		for _, v := range vs {
			n += len(k) + len(v)
		}
	}
	return int64(n)
}

// receive is the subscription's callback; it never blocks.
func (f *natsFeed) receive(m *nats.Msg) {
	n := msgSize(m)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.overflowed {
		return
	}
	if f.buffered > 0 && f.buffered+n > f.limit {
		f.overflowed = true
		close(f.over)
		return
	}
	f.queue = append(f.queue, m)
	f.buffered += n
	if f.stats != nil {
		f.stats.notePeak(f.buffered)
	}
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// pump hands queued messages to the relay in order until Close.
func (f *natsFeed) pump() {
	defer close(f.pumped)
	for {
		f.mu.Lock()
		var m *nats.Msg
		if len(f.queue) > 0 {
			m = f.queue[0]
			f.queue[0] = nil
			f.queue = f.queue[1:]
		}
		f.mu.Unlock()
		if m == nil {
			select {
			case <-f.wake:
				continue
			case <-f.done:
				return
			}
		}
		select {
		case f.ch <- m:
			f.mu.Lock()
			f.buffered -= msgSize(m)
			f.mu.Unlock()
		case <-f.done:
			return
		}
	}
}

func (f *natsFeed) Msgs() <-chan *nats.Msg { return f.ch }

func (f *natsFeed) Overflow() <-chan struct{} { return f.over }

func (f *natsFeed) Dropped() int {
	n, err := f.sub.Dropped()
	if err != nil {
		return 0
	}
	return n
}

// Buffered is the bytes waiting for the relay now.
func (f *natsFeed) Buffered() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.buffered
}

// Close unsubscribes and stops the pump. Safe to call twice.
func (f *natsFeed) Close() {
	f.once.Do(func() {
		_ = f.sub.Unsubscribe()
		close(f.done)
		<-f.pumped
	})
}

// jobWildcard matches both broker.StreamSubject(id) and broker.StateSubject(id): they
// differ only in their last token.
func jobWildcard(id string) string {
	state := broker.StateSubject(id)
	return state[:strings.LastIndexByte(state, '.')+1] + "*"
}
