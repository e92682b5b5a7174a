package broker

import (
	"sync"

	"github.com/nats-io/nats.go"
)

// feedPendingMsgs and feedPendingBytes bound the subscription's own pending list, a
// backstop only: the callback never blocks, so messages wait in the feed's queue, where
// they are counted against FeedConfig.Buffer. A message NATS drops shows as a stream gap.
const (
	feedPendingMsgs  = 1 << 20
	feedPendingBytes = 64 << 20
)

// FeedConfig sizes a JobFeed.
type FeedConfig struct {
	// Buffer caps the bytes held for a reader slower than the stream; one message is
	// always taken. Past it the feed drops what comes next and closes Overflow.
	Buffer int64
	// Peak, if set, is told the bytes held each time a message is queued.
	Peak func(buffered int64)
}

// JobFeed yields one job's answer and state changes as Events, in the order NATS
// delivered them: its frames, its final marker, its state changes, and a gap when the
// stream broke. Its callback queues each message and a pump hands them on as fast as
// the reader takes them, so what waits for a slow reader is counted in one place.
type JobFeed struct {
	sub    *nats.Subscription
	ch     chan Event
	wake   chan struct{}
	over   chan struct{}
	done   chan struct{}
	pumped chan struct{}
	once   sync.Once
	cfg    FeedConfig
	dec    EventDecoder

	mu         sync.Mutex
	queue      []*nats.Msg
	buffered   int64
	overflowed bool
}

// Feed subscribes to job id's stream and state subjects. Subscribe before the job is
// submitted: a frame published before the subscription exists is lost.
func (s *Store) Feed(id string, cfg FeedConfig) (*JobFeed, error) {
	return subscribeFeed(s.nc, id, cfg)
}

// subscribeFeed takes job id's stream and state subjects with ONE wildcard subscription:
// a single subscription keeps the connection's order between the two, and the worker
// contract relies on it (the final stream marker comes before the terminal state event).
func subscribeFeed(nc *nats.Conn, id string, cfg FeedConfig) (*JobFeed, error) {
	f := &JobFeed{
		ch: make(chan Event), wake: make(chan struct{}, 1), over: make(chan struct{}),
		done: make(chan struct{}), pumped: make(chan struct{}), cfg: cfg,
	}
	sub, err := nc.Subscribe(jobWildcard(id), f.receive)
	if err != nil {
		return nil, err
	}
	if err := sub.SetPendingLimits(feedPendingMsgs, max(feedPendingBytes, int(cfg.Buffer))); err != nil {
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
func (f *JobFeed) receive(m *nats.Msg) {
	n := msgSize(m)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.overflowed {
		return
	}
	if f.buffered > 0 && f.buffered+n > f.cfg.Buffer {
		f.overflowed = true
		close(f.over)
		return
	}
	f.queue = append(f.queue, m)
	f.buffered += n
	if f.cfg.Peak != nil {
		f.cfg.Peak(f.buffered)
	}
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// pump hands queued messages, decoded, to the reader in order until Close.
func (f *JobFeed) pump() {
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
		ev, ok := f.dec.Decode(m, f.Dropped)
		if !ok {
			f.release(m)
			continue
		}
		select {
		case f.ch <- ev:
			f.release(m)
		case <-f.done:
			return
		}
	}
}

func (f *JobFeed) release(m *nats.Msg) {
	f.mu.Lock()
	f.buffered -= msgSize(m)
	f.mu.Unlock()
}

// Events yields the job's events in order.
func (f *JobFeed) Events() <-chan Event { return f.ch }

// Overflow is closed once more than FeedConfig.Buffer waits for the reader: it reads
// slower than the stream comes and is to be cut off. Events after it are lost.
func (f *JobFeed) Overflow() <-chan struct{} { return f.over }

// Dropped counts messages NATS lost because the reader fell too far behind: any is a gap.
func (f *JobFeed) Dropped() int {
	n, err := f.sub.Dropped()
	if err != nil {
		return 0
	}
	return n
}

// Buffered is the bytes waiting for the reader now.
func (f *JobFeed) Buffered() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.buffered
}

// Close unsubscribes and stops the pump. Safe to call twice.
func (f *JobFeed) Close() {
	f.once.Do(func() {
		_ = f.sub.Unsubscribe()
		close(f.done)
		<-f.pumped
	})
}

// jobWildcard matches both StreamSubject(id) and StateSubject(id): they differ only in
// their last token.
func jobWildcard(id string) string { return jobPrefix + id + ".*" }
