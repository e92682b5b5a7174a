package gateway

import (
	"strings"
	"sync"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// jobFeed delivers a job's stream frames and state events in the order NATS delivered
// them to this connection.
type jobFeed interface {
	Msgs() <-chan *nats.Msg
	// Dropped counts messages lost because the relay fell too far behind.
	Dropped() int
}

// Limits of one job's subscription. The pending list grows only as far as the client
// lags behind the target; beyond the limits NATS drops messages (a slow consumer), which
// the relay reports as a stream gap rather than relaying a corrupt answer.
const (
	feedBuffer       = 64
	feedPendingMsgs  = 1 << 20
	feedPendingBytes = 256 << 20
)

// natsFeed is a jobFeed on one core NATS subscription.
type natsFeed struct {
	sub  *nats.Subscription
	ch   chan *nats.Msg
	done chan struct{}
	once sync.Once
}

// subscribeJob subscribes to job id's stream and state subjects with ONE wildcard
// subscription: a single subscription keeps the connection's order between the two, and
// the worker contract relies on it (the final stream marker comes before the terminal
// state event). The callback may block while the HTTP client is slow; NATS then buffers
// in the subscription's pending list, up to the limits above.
func subscribeJob(nc *nats.Conn, id string) (*natsFeed, error) {
	f := &natsFeed{ch: make(chan *nats.Msg, feedBuffer), done: make(chan struct{})}
	sub, err := nc.Subscribe(jobWildcard(id), func(m *nats.Msg) {
		select {
		case f.ch <- m:
		case <-f.done:
		}
	})
	if err != nil {
		return nil, err
	}
	if err := sub.SetPendingLimits(feedPendingMsgs, feedPendingBytes); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	f.sub = sub
	return f, nil
}

func (f *natsFeed) Msgs() <-chan *nats.Msg { return f.ch }

func (f *natsFeed) Dropped() int {
	n, err := f.sub.Dropped()
	if err != nil {
		return 0
	}
	return n
}

// Close unsubscribes and releases a callback blocked on the channel. Safe to call twice.
func (f *natsFeed) Close() {
	f.once.Do(func() {
		close(f.done)
		_ = f.sub.Unsubscribe()
	})
}

// jobWildcard matches both broker.StreamSubject(id) and broker.StateSubject(id): they
// differ only in their last token.
func jobWildcard(id string) string {
	state := broker.StateSubject(id)
	return state[:strings.LastIndexByte(state, '.')+1] + "*"
}
