package broker

import (
	"bytes"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	// Buffer caps the bytes held for a reader slower than the stream: a new frame that
	// would pass it (with something held already) drops what comes next and closes
	// Overflow. The rest of a frame begun is always taken (the pieces of a frame larger
	// than a message are published back to back, faster than any reader takes them: a
	// frame the target sent at once, such as a non-streamed answer of tens of MiB, is no
	// sign of a slow reader; the answer's bound, Config.MaxAnswer, holds it), and so are
	// the final marker and the state events, small and few.
	Buffer int64
	// Peak, if set, is told the bytes held each time a message is queued.
	Peak func(buffered int64)
}

// JobFeed yields one job's answer and state changes as Events, in the order NATS
// delivered them: its frames, its final marker, its state changes, and a gap when the
// stream broke. Its callback (or a local StreamWriter) queues each message, and the
// reader takes them from the queue itself (Ready, Next), so what waits for a slow reader
// is counted in one place and a message reaches the reader in one hand-off (ADR-0037).
type JobFeed struct {
	sub  *nats.Subscription
	wake chan struct{}
	over chan struct{}
	once sync.Once
	cfg  FeedConfig
	dec  EventDecoder // the reader's only

	id    string
	local *localFeeds // where it is registered for local delivery; nil if not
	boot  string      // the boot id of its Store's foreman: the pings it answers (ADR-0072)
	nc    *nats.Conn  // where it asks the runner for lost messages (ADR-0078)
	// resendWait bounds each ask (Config.ResendWait).
	resendWait time.Duration

	mu         sync.Mutex
	queue      []*nats.Msg
	buffered   int64
	overflowed bool
	// midFrame: the last frame message queued was a piece with more of its frame to come.
	midFrame bool
	// echoes are the messages handed over locally whose copy from NATS is still to come,
	// in the order they were published.
	echoes []*nats.Msg
	// mending: a resend is under way (ADR-0078); the queue waits for its messages.
	// resends counts the resends that brought nothing, at most maxResends (one under
	// way counts until it brought the message asked for). copies are the
	// messages sent again, by Foreman-Seq, until their copy from NATS came.
	mending bool
	resends int
	asked   int // every resend asked for (Resends)
	copies  map[uint64]*nats.Msg

	// beforeReceive sees each message from NATS first; true: it is lost on the way.
	beforeReceive atomic.Pointer[func(*nats.Msg) bool] // tests only (export_test.go)
}

// Feed subscribes to job id's stream and state subjects. Subscribe before the job is
// submitted: a frame published before the subscription exists is lost.
//
// A StreamWriter of the same Store hands the feed its messages directly, ahead of NATS
// (ADR-0035): the copy that comes from NATS after is dropped as an echo.
func (s *Store) Feed(id string, cfg FeedConfig) (*JobFeed, error) {
	f, err := subscribeFeed(s.nc, id, s.cfg.BootID, cfg)
	if err != nil {
		return nil, err
	}
	f.id, f.local, f.resendWait = id, &s.feeds, s.cfg.ResendWait
	s.feeds.add(id, f)
	return f, nil
}

// subscribeFeed takes job id's stream and state subjects with ONE wildcard subscription:
// a single subscription keeps the connection's order between the two, and the worker
// contract relies on it (the final stream marker comes before the terminal state event).
// That holds on one NATS server; on a cluster the state event is republished by the jobs
// stream's leader, possibly on another node than the runner's, and may overtake the last
// frames: a reader waits a moment for them (the gateway's finalGrace).
func subscribeFeed(nc *nats.Conn, id, boot string, cfg FeedConfig) (*JobFeed, error) {
	f := &JobFeed{wake: make(chan struct{}, 1), over: make(chan struct{}), cfg: cfg, boot: boot, nc: nc}
	sub, err := nc.Subscribe(jobWildcard(id), f.receive)
	if err != nil {
		return nil, err
	}
	if err := sub.SetPendingLimits(feedPendingMsgs, max(feedPendingBytes, int(cfg.Buffer))); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	f.sub = sub
	return f, nil
}

// msgOverhead is what a queued message costs beyond its bytes: the nats.Msg, its header
// map and slices. Measured, 20,000 frames of 111 bytes held 589 bytes of heap each (the
// runner's copy, kept for resends, about 130 of them) where their bytes counted 171: a
// slow reader of a stream of small tokens held about three times the Buffer (and, with
// the garbage collector's slack, 57 MB of RSS for one reader under the default 8 MiB).
const msgOverhead = 320

// msgSize is what a message costs while it waits: its data, subject and headers, and
// the message itself.
func msgSize(m *nats.Msg) int64 {
	n := msgOverhead + len(m.Data) + len(m.Subject)
	for k, vs := range m.Header {
		for _, v := range vs {
			n += len(k) + len(v)
		}
	}
	return int64(n)
}

// receive is the subscription's callback; it never blocks. A message handed over
// locally before comes a second time from NATS: that echo is dropped. A runner's ping
// is answered, and is no event.
func (f *JobFeed) receive(m *nats.Msg) {
	if isResend(m) {
		return // a feed's request to the runner (ADR-0078), this one's or another's
	}
	if isPing(m) {
		// A runner on another node asks whether this subscription reached its server
		// (ADR-0072): that it came here says so. Only the caller's foreman answers: a
		// watcher elsewhere proves nothing of the caller's subscription.
		if gw := m.Header.Get(HeaderGateway); m.Reply != "" && (gw == "" || gw == f.boot) {
			_ = m.Respond(nil)
		}
		return
	}
	if before := f.beforeReceive.Load(); before != nil && (*before)(m) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if i := f.echoOfLocked(m); i >= 0 {
		// Echoes come in publish order; any before it were lost on the way (a gap NATS
		// counts in Dropped), and are not waited for any longer.
		clear(f.echoes[:i+1])
		f.echoes = f.echoes[i+1:]
		return
	}
	f.enqueueLocked(m)
}

// expect tells the feed that m, published by a StreamWriter of this process, will be
// handed over directly: its copy from NATS is an echo, whether it comes before or after.
func (f *JobFeed) expect(m *nats.Msg) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.echoes = append(f.echoes, m)
}

// forget takes back expect(m): m was not published.
func (f *JobFeed) forget(m *nats.Msg) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.echoes = slices.DeleteFunc(f.echoes, func(e *nats.Msg) bool { return e == m })
}

// deliver takes m, published by a StreamWriter of this process; it never blocks.
func (f *JobFeed) deliver(m *nats.Msg) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.enqueueLocked(m)
}

// echoOfLocked is the index in echoes of the message m is the NATS copy of, or -1.
func (f *JobFeed) echoOfLocked(m *nats.Msg) int {
	if len(f.echoes) == 0 || strings.HasSuffix(m.Subject, ".state") {
		return -1
	}
	for i, e := range f.echoes {
		if e.Subject == m.Subject && e.Header.Get(HeaderSeq) == m.Header.Get(HeaderSeq) &&
			e.Header.Get(HeaderFinal) == m.Header.Get(HeaderFinal) && bytes.Equal(e.Data, m.Data) {
			return i
		}
	}
	return -1
}

// enqueueLocked queues m for the reader, or overflows the feed. f.mu must be held.
func (f *JobFeed) enqueueLocked(m *nats.Msg) {
	if f.overflowed {
		return
	}
	n := msgSize(m)
	state := strings.HasSuffix(m.Subject, ".state")
	// Only a new frame of the answer is held to the buffer: the rest of a begun frame, a
	// final marker (no data) and a state event are small or already promised, and the
	// reader would be cut off with all it needs already queued.
	newFrame := !state && !f.midFrame && m.Header.Get(HeaderFinal) == ""
	if newFrame && f.buffered > 0 && f.buffered+n > f.cfg.Buffer {
		f.overflowed = true
		close(f.over)
		return
	}
	if !state {
		f.midFrame = m.Header.Get(HeaderMore) != ""
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

// Ready receives a signal when events may be waiting: take them with Next until it
// reports none, then wait on Ready again. A message queued after that last Next signals
// Ready anew, so none is missed.
func (f *JobFeed) Ready() <-chan struct{} { return f.wake }

// Next returns the job's next event in order, or false when none is waiting now. It is
// the reader's: call it from one goroutine at a time.
//
// A stream message past the one expected next (messages lost on the way: on a NATS
// cluster, a node that died with them, or a reconnect) from a runner that serves resends
// (HeaderResends) is not a gap at once: the feed asks the runner to send the missing
// ones again (ADR-0078), and Next reports none until they came or the runner did not
// answer (Config.ResendWait, maxResends asks); then it goes on with them, or with the
// gap.
func (f *JobFeed) Next() (Event, bool) {
	for {
		f.mu.Lock()
		if len(f.queue) == 0 || f.mending {
			f.mu.Unlock()
			return Event{}, false
		}
		m := f.queue[0]
		if seq, ok := frameSeq(m); ok {
			next := f.dec.Frames() + 1
			if c := f.copies[seq]; c != nil && seq < next && sameMessage(c, m) {
				delete(f.copies, seq)
				f.dropLocked()
				f.mu.Unlock()
				continue // the NATS copy of one taken, sent again with those lost
			}
			if seq > next && m.Header.Get(HeaderResends) != "" && f.mendLocked(next) {
				f.mu.Unlock()
				return Event{}, false
			}
		}
		f.dropLocked()
		f.mu.Unlock()
		if ev, ok := f.dec.Decode(m, f.Dropped); ok {
			return ev, true
		}
	}
}

// dropLocked takes the queue's first message off it. f.mu is held.
func (f *JobFeed) dropLocked() {
	m := f.queue[0]
	f.queue[0] = nil
	f.queue = f.queue[1:]
	f.buffered -= msgSize(m)
}

// frameSeq is the Foreman-Seq of a stream message (a frame, a piece, a final marker),
// false for a state event or a message without one.
func frameSeq(m *nats.Msg) (uint64, bool) {
	if strings.HasSuffix(m.Subject, ".state") {
		return 0, false
	}
	seq, err := strconv.ParseUint(m.Header.Get(HeaderSeq), 10, 64)
	return seq, err == nil
}

// Resends is how many times the feed asked the runner for lost messages (ADR-0078).
func (f *JobFeed) Resends() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asked
}

// sameMessage reports whether stream messages a and b, of one Foreman-Seq, are the same
// message: a runner that numbers from 1 again (another attempt) sends others.
func sameMessage(a, b *nats.Msg) bool {
	return bytes.Equal(a.Data, b.Data) && a.Header.Get(HeaderFinal) == b.Header.Get(HeaderFinal) &&
		a.Header.Get(HeaderMore) == b.Header.Get(HeaderMore)
}

// Mend asks the job's runner for the stream's messages after the last one the reader
// took (ADR-0078): for a reader that saw the job end without its final marker, which
// may be lost on the way. It reports whether the runner is being asked (now, or by an
// ask under way): false once the feed asks no more (maxResends). What the runner sends
// comes through Next, ahead of what waits.
func (f *JobFeed) Mend() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mending || f.mendLocked(f.dec.Frames()+1)
}

// mendLocked starts a resend of the messages from Foreman-Seq from on, unless the feed
// asked maxResends times already. f.mu is held.
func (f *JobFeed) mendLocked(from uint64) bool {
	if f.nc == nil || f.resends >= maxResends {
		return false
	}
	f.resends++
	f.asked++
	f.mending = true
	go f.resend(f.nc, from, f.resendWait)
	return true
}

// resent takes a resend's messages from Foreman-Seq from on (none: the runner did not
// answer) ahead of the queue and lets the reader go on. They are not held to the
// buffer: the runner's answer bound (Config.MaxAnswer) holds them. A resend that
// brought the message asked for is not counted against maxResends.
func (f *JobFeed) resent(from uint64, got []*nats.Msg) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mending = false
	if len(got) > 0 {
		if seq, ok := frameSeq(got[0]); ok && seq == from {
			f.resends--
		}
	}
	for _, m := range got {
		f.buffered += msgSize(m)
		if seq, ok := frameSeq(m); ok {
			if f.copies == nil {
				f.copies = map[uint64]*nats.Msg{}
			}
			f.copies[seq] = m
		}
	}
	f.queue = append(got, f.queue...)
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

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

// Close unsubscribes; what is still queued stays for Next. Safe to call twice.
func (f *JobFeed) Close() {
	f.once.Do(func() {
		if f.local != nil {
			f.local.remove(f.id, f)
		}
		_ = f.sub.Unsubscribe()
	})
}

// jobWildcard matches both StreamSubject(id) and StateSubject(id): they differ only in
// their last token.
func jobWildcard(id string) string { return jobPrefix + id + ".*" }

// localFeeds are the JobFeeds open on one Store, by job id.
type localFeeds struct {
	mu sync.Mutex
	m  map[string][]*JobFeed
}

func (l *localFeeds) add(id string, f *JobFeed) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string][]*JobFeed{}
	}
	l.m[id] = append(l.m[id], f)
}

func (l *localFeeds) remove(id string, f *JobFeed) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// A new slice: a publish may be reading the old one.
	fs := slices.DeleteFunc(slices.Clone(l.m[id]), func(g *JobFeed) bool { return g == f })
	if len(fs) == 0 {
		delete(l.m, id)
		return
	}
	l.m[id] = fs
}

// feedsOf is the feeds of job id open on this Store.
func (l *localFeeds) feedsOf(id string) []*JobFeed {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m[id]
}
