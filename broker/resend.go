package broker

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// resendSuffix ends a job's resend subject, foreman.job.<id>.resend (ADR-0078): the
// caller's feed asks the runner there for the messages of the job's stream it lost on
// the way. Like the ping, it is no event of the job: a feed ignores it.
const resendSuffix = ".resend"

// ResendSubject is where the runner of job id takes requests to send its stream's
// messages again (ADR-0078).
func ResendSubject(id string) string { return jobPrefix + id + resendSuffix }

// isResend reports whether a message a feed got is a resend request, no event of the job.
func isResend(m *nats.Msg) bool { return strings.HasSuffix(m.Subject, resendSuffix) }

// Headers of a resend: the request names the first Foreman-Seq wanted; the runner sends
// each message from it on to the request's reply subject, with its own headers, and then
// one empty message marked HeaderResendEnd.
const (
	HeaderResendFrom = "Foreman-Resend-From"
	HeaderResendEnd  = "Foreman-Resend-End"
)

// HeaderResends rides on every stream message of a writer that serves resends: a feed
// that finds a gap before such a message asks for what it lost, and reports the gap at
// once after another writer's (an async job's, a foreman's before ADR-0078).
const HeaderResends = "Foreman-Resends"

// resendKeep is how long a runner keeps an attempt's messages for a resend after the
// attempt ended (StreamWriter.Close): the caller's feed asks within moments of the job's
// end reaching it, and goes on asking for up to maxResends × Config.ResendWait.
const resendKeep = 30 * time.Second

// The pace of a feed's resend: each request waits resendTry at most for the runner's
// messages (a server that knows of no runner says so at once, "no responders": the
// runner's subscription may not have crossed the route yet, or it reconnects), the next
// follows after resendPause; an ask is given up Config.ResendWait after it began.
const (
	resendTry   = 500 * time.Millisecond
	resendPause = 50 * time.Millisecond
)

// defaultResendWait is Config.ResendWait's default.
const defaultResendWait = 5 * time.Second

// maxResends bounds the asks of one feed that brought nothing: a runner that never
// answers (gone, one of a foreman before ADR-0078, an async job's) is reported, not
// waited on without end. An ask the runner answered with the message asked for is not
// counted: a long answer crossing a rolling restart breaks at each node restarted, and
// each such mend moves the reader on by one message at least, so they are bounded by
// the answer.
const maxResends = 3

// resender keeps what a StreamWriter published and sends it again on request
// (ADR-0078). Its subscription lives from AwaitReader until resendKeep after Close.
type resender struct {
	sub  *nats.Subscription
	keep time.Duration // how long after close (resendKeep)

	mu   sync.Mutex
	sent []*nats.Msg // in order: Foreman-Seq 1, 2, 3…
	done bool        // the writer closed: nothing more is kept
}

// serveResends makes w keep its published messages and send them again to a feed that
// asks (ADR-0078). A failed subscription leaves w without it: its reader's gaps stay
// gaps, as before.
func (w *StreamWriter) serveResends() {
	rs := &resender{keep: resendKeep}
	if w.resendKeep > 0 {
		rs.keep = w.resendKeep
	}
	sub, err := w.nc.Subscribe(ResendSubject(w.id), rs.serve(w.nc))
	if err != nil {
		return
	}
	rs.sub = sub
	w.resend = rs
}

// record keeps m, published.
func (rs *resender) record(m *nats.Msg) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if !rs.done {
		rs.sent = append(rs.sent, m)
	}
}

// reset forgets the messages kept: an attempt numbering from 1 again.
func (rs *resender) reset() {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.sent = nil
}

// close lets the subscription go rs.keep from now, and the messages with it.
func (rs *resender) close() {
	rs.mu.Lock()
	if rs.done {
		rs.mu.Unlock()
		return
	}
	rs.done = true
	rs.mu.Unlock()
	time.AfterFunc(rs.keep, func() {
		_ = rs.sub.Unsubscribe()
		rs.mu.Lock()
		rs.sent = nil
		rs.mu.Unlock()
	})
}

// serve answers one resend request: the kept messages from its HeaderResendFrom on, in
// order, then the end marker; a request for none of them it leaves to another writer of
// the job.
func (rs *resender) serve(nc *nats.Conn) nats.MsgHandler {
	return func(req *nats.Msg) {
		from, err := strconv.ParseUint(req.Header.Get(HeaderResendFrom), 10, 64)
		if req.Reply == "" || err != nil || from == 0 {
			return
		}
		rs.mu.Lock()
		var out []*nats.Msg
		if from <= uint64(len(rs.sent)) {
			out = rs.sent[from-1:]
		}
		rs.mu.Unlock()
		if len(out) == 0 {
			// Nothing from there on: an earlier attempt's writer of the job, done or
			// reset, still subscribed for its keep, would else answer first, with
			// nothing, for the one that has the messages (a retried job run again).
			return
		}
		for _, m := range out {
			c := nats.NewMsg(req.Reply)
			for k, v := range m.Header {
				c.Header[k] = v
			}
			c.Data = m.Data
			if nc.PublishMsg(c) != nil {
				return
			}
		}
		end := nats.NewMsg(req.Reply)
		end.Header.Set(HeaderResendEnd, strconv.Itoa(len(out)))
		_ = nc.PublishMsg(end)
	}
}

// resend asks the job's runner for its stream's messages from Foreman-Seq from on, until
// it answers or wait passes, and hands what it got to the feed (resent): nil when
// the runner did not answer, and the gap stands.
func (f *JobFeed) resend(nc *nats.Conn, from uint64, wait time.Duration) {
	f.resent(from, fetchResend(nc, f.id, from, wait))
}

func fetchResend(nc *nats.Conn, id string, from uint64, wait time.Duration) []*nats.Msg {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for ctx.Err() == nil {
		if got, ok := askResend(ctx, nc, id, from); ok {
			return got
		}
		t := time.NewTimer(resendPause)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	return nil
}

// askResend sends one resend request, on an inbox of its own (a late answer to an
// earlier request cannot mix with its own), and reads its answer.
func askResend(ctx context.Context, nc *nats.Conn, id string, from uint64) ([]*nats.Msg, bool) {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, false
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(feedPendingMsgs, feedPendingBytes)
	req := nats.NewMsg(ResendSubject(id))
	req.Reply = inbox
	req.Header.Set(HeaderResendFrom, strconv.FormatUint(from, 10))
	if err := nc.PublishMsg(req); err != nil {
		return nil, false
	}
	return readResend(ctx, sub)
}

// readResend reads one answer to a resend request from sub: the messages up to the end
// marker. ok is false when none came within resendTry, the server knew of no runner
// ("no responders"), or the answer broke off.
func readResend(ctx context.Context, sub *nats.Subscription) (got []*nats.Msg, ok bool) {
	tctx, cancel := context.WithTimeout(ctx, resendTry)
	defer cancel()
	for {
		m, err := sub.NextMsgWithContext(tctx)
		if err != nil {
			return nil, false
		}
		if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
			return nil, false // no responders
		}
		if n := m.Header.Get(HeaderResendEnd); n != "" {
			want, err := strconv.Atoi(n)
			return got, err == nil && want == len(got)
		}
		got = append(got, m)
	}
}
