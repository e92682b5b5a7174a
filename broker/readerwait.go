package broker

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// pingSuffix ends a job's ping subject, foreman.job.<id>.ping (ADR-0072): a runner asks
// there whether its NATS server knows of a reader of the job's stream. The JobFeed's one
// wildcard subscription covers it, so the answer proves that very subscription reached
// the server the runner publishes to.
const pingSuffix = ".ping"

// PingSubject is where the runner of job id asks for a reader of its stream (ADR-0072):
// an empty request, answered empty by every JobFeed of the job.
func PingSubject(id string) string { return jobPrefix + id + pingSuffix }

// isPing reports whether a message a feed got is a runner's ping, no event of the job.
func isPing(m *nats.Msg) bool { return strings.HasSuffix(m.Subject, pingSuffix) }

// The pace of the pings: each waits pingTry at most for its answer (a NATS server that
// knows of no subscriber says so at once, "no responders"; one that knows of a reader
// that does not answer, an external watcher of foreman.job.>, lets it run out), and the
// next follows after a pause growing from pingPause to pingMaxPause. A route that comes
// back is heard within one pause of its interest crossing it.
const (
	pingTry      = 500 * time.Millisecond
	pingPause    = 10 * time.Millisecond
	pingMaxPause = 250 * time.Millisecond
)

// defaultReaderWait is Config.ReaderWait's default.
const defaultReaderWait = 5 * time.Second

// readerWait holds the messages of a StreamWriter's attempt until the job's reader is
// heard (ADR-0072). Its goroutine pings until a feed answers, the wait is given up, or
// it is stopped; then it publishes what it held, in order, and the writer publishes
// directly from then on.
type readerWait struct {
	bound  time.Duration // how long messages are held, from the first
	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine returned

	mu      sync.Mutex
	holding bool          // messages are held, not published (until flushed)
	held    []*nats.Msg   // in publish order
	since   time.Time     // when the first was held; zero while none is
	err     error         // the failed publish of a held message; every later one fails too
	flushed chan struct{} // closed once held messages no longer wait
}

// AwaitReader makes the writer hold its attempt's messages until the NATS server it
// publishes to knows of a reader of the job's stream: the feed of a sync job's caller on
// another foreman, whose subscription crosses a cluster route asynchronously and may not
// have reached this node yet (a route re-forming after a restart, or cut). A NATS server
// drops what it knows of no subscriber for; held, the answer waits instead. It pings the
// job's feed at once, beside the target call, which it never holds up: by the answer's
// first frame the reply is usually in, and the frame goes out without a wait. Messages
// are held for at most Config.ReaderWait from the first one held, then go out all the
// same (the caller may be gone); a final marker waits for them (Final).
//
// gateway is the boot id of the caller's foreman (Job.Gateway): only its feeds answer,
// a watcher of the job on another foreman proves nothing of the caller's subscription.
// Call it before the attempt's first message, only for a job whose caller's feed answers
// pings (Job.FeedPing): a reader that does not would take the ping for a broken stream.
// It does nothing when a feed of the job is open on this Store: the hand-over of
// ADR-0035 needs no NATS, and the embedded server's sync calls pay nothing. Close ends
// the wait.
func (w *StreamWriter) AwaitReader(gateway string) {
	if w.wait != nil || w.seq > 0 || len(w.local.feedsOf(w.id)) > 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	rw := &readerWait{bound: w.readerWait, cancel: cancel, done: make(chan struct{}),
		holding: true, flushed: make(chan struct{})}
	w.wait = rw
	w.serveResends()
	go func() {
		defer close(rw.done)
		rw.ping(ctx, w.nc, PingSubject(w.id), gateway)
		rw.flush(w.send)
	}()
}

// Close ends the writer's wait for a reader (AwaitReader), publishing what it still
// held, and waits for its goroutine. Safe to call twice, and on a writer that waits for
// none.
func (w *StreamWriter) Close() {
	if w.wait != nil {
		w.wait.cancel()
		<-w.wait.done
	}
	if w.resend != nil {
		w.resend.close()
	}
}

// ping asks for a reader on subject, a feed of foreman gateway, until one answers, the
// wait is given up (past its bound since the first message held) or ctx ends.
func (rw *readerWait) ping(ctx context.Context, nc *nats.Conn, subject, gateway string) {
	pause := pingPause
	for {
		m := nats.NewMsg(subject)
		if gateway != "" {
			m.Header.Set(HeaderGateway, gateway)
		}
		tctx, cancel := context.WithTimeout(ctx, pingTry)
		_, err := nc.RequestMsgWithContext(tctx, m)
		cancel()
		if err == nil || ctx.Err() != nil || rw.expired() {
			return
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		pause = min(2*pause, pingMaxPause)
	}
}

// expired reports whether the first message held waited Config.ReaderWait.
func (rw *readerWait) expired() bool {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return !rw.since.IsZero() && time.Since(rw.since) >= rw.bound
}

// hold keeps m while the wait holds messages, and reports whether it did; once the
// held messages went out, it reports false with the error a publish of theirs failed
// with, if any.
func (rw *readerWait) hold(m *nats.Msg) (bool, error) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if !rw.holding {
		return false, rw.err
	}
	if rw.since.IsZero() {
		rw.since = time.Now()
	}
	rw.held = append(rw.held, m)
	return true, nil
}

// flush publishes the held messages in order with send, and ends the holding. A
// message after one that failed is not published: its reader would see a gap.
func (rw *readerWait) flush(send func(*nats.Msg) error) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	for i, m := range rw.held {
		if rw.err == nil {
			rw.err = send(m)
		}
		rw.held[i] = nil
	}
	rw.held, rw.holding = nil, false
	close(rw.flushed)
}

// outcome waits until the held messages went out and returns the error a publish of
// theirs failed with.
func (rw *readerWait) outcome() error {
	<-rw.flushed
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return rw.err
}
