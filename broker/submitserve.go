package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// submitQueueGroup spreads SubmitSubject requests over all foreman instances on one NATS,
// so each request creates exactly one job.
const submitQueueGroup = "foreman-submit"

// SubmitReply is the reply on SubmitSubject: the job id, or an error with the HTTP
// status POST /jobs would have answered.
type SubmitReply struct {
	JobID  string `json:"job_id,omitempty"`
	Error  string `json:"error,omitempty"`
	Status int    `json:"status,omitempty"`
	// RetryAfter is, with a 503 or 429, the seconds to wait before submitting again: the
	// Retry-After POST /jobs would send.
	RetryAfter int `json:"retry_after,omitempty"`
}

// SubmitRequest is one request on SubmitSubject: a POST /jobs body and its
// Idempotency-Key header.
type SubmitRequest struct {
	Data []byte
	// IdempotencyKeys are the values of every Idempotency-Key header of the request, its
	// name matched in any case as HTTP matches it: NATS keeps a header name as it was sent
	// and nats.Header.Get matches it exactly, while a client used to HTTP may well send
	// "idempotency-key". Several spellings keep no order between them.
	IdempotencyKeys []string
}

// SubmitServer answers SubmitSubject requests; see Store.ServeSubmit.
type SubmitServer struct {
	// Answer decides one request. Required.
	Answer func(ctx context.Context, req SubmitRequest) SubmitReply
	// Concurrency bounds the requests answered at once; default 16.
	Concurrency int
	// Backlog bounds the bytes of the requests held at once, answered or waiting for
	// one of the Concurrency answers; default submitBacklog. A request beyond it is
	// answered at once with a 503 and RetryAfter.
	Backlog int
	// RetryAfter is the retry_after of that 503, in seconds; default 1.
	RetryAfter int
	// Logger gets the requests refused for their reply subject and the replies that could
	// not be sent. Default: the store's.
	Logger *slog.Logger

	// refusals, replyFailures and oversized keep a flood of requests (any client may send
	// them) refused for their reply subject, whose reply could not be sent, or whose reply
	// was too large for a message, from flooding the log too; each has its own, so a
	// flood of one kind hides no line of another.
	refusals, replyFailures, oversized *logLimit
}

// submitBacklog is SubmitServer.Backlog's default: half of what nats.go holds for a
// subscription (64 MB), so its buffer never fills, as it did when a flood of submits
// waited there for their answers: nats.go then dropped every further request, anyone's,
// with neither a reply nor a job.
const submitBacklog = 32 << 20

// submitPendingBacklogs is how many backlogs nats.go may hold for the subscription before
// it drops requests.
const submitPendingBacklogs = 4

// submitOverhead is what a held request counts beside its data and headers: a goroutine
// and the message, so that a flood of empty requests is bounded too.
const submitOverhead = 4 << 10

// errSubmitBusy is the 503 of a request beyond the backlog.
const errSubmitBusy = "too many submits waiting to be answered; retry shortly"

// refusalLogEvery is how often a refused submit (or one whose reply failed) is logged at
// most; the next line says how many were held back since the last one.
const refusalLogEvery = 10 * time.Second

// logLimit lets one log line through per interval and counts the ones it holds back.
type logLimit struct {
	// what names the lines held back in the count's attribute: "more_<what>_since_last_logged".
	what string

	mu   sync.Mutex
	last time.Time
	held int
}

// allow reports whether a line may be logged at now, and how many were held back since
// the last one that was.
func (l *logLimit) allow(now time.Time, every time.Duration) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < every {
		l.held++
		return false, 0
	}
	held := l.held
	l.last, l.held = now, 0
	return true, held
}

// warn logs msg at Warn, at most once per refusalLogEvery.
func (l *logLimit) warn(log *slog.Logger, msg string, args ...any) {
	ok, held := l.allow(time.Now(), refusalLogEvery)
	if !ok {
		return
	}
	if held > 0 {
		args = append(args, "more_"+l.what+"_since_last_logged", held)
	}
	log.Warn(msg, args...)
}

// ServeSubmit answers job submissions on SubmitSubject until ctx ends, in a queue group
// with every other foreman on the same NATS. A request whose reply subject is not an
// inbox gets no answer: answering it would publish, with foreman's rights, wherever the
// sender pointed. It returns once every answer started has gone out.
func (s *Store) ServeSubmit(ctx context.Context, srv SubmitServer) error {
	srv.refusals, srv.replyFailures, srv.oversized = &logLimit{what: "refused"}, &logLimit{what: "failed"}, &logLimit{what: "too large"}
	if srv.Concurrency <= 0 {
		srv.Concurrency = 16
	}
	if srv.Logger == nil {
		srv.Logger = s.log
	}
	if srv.Backlog <= 0 {
		srv.Backlog = submitBacklog
	}
	if srv.RetryAfter <= 0 {
		srv.RetryAfter = 1
	}
	// nats.go runs one subscription's callbacks one after another; a submit may wait for
	// a model re-poll, so answer in goroutines, a bounded number at a time. The callback
	// never waits: a request waits for its answer in its own goroutine, and one beyond
	// the backlog is answered busy at once.
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		closed bool // set after Unsubscribe; a callback still running then adds no work
		held   int  // bytes of the requests taken and not yet answered (submitCost)
	)
	slots := make(chan struct{}, srv.Concurrency)
	sub, err := s.nc.QueueSubscribe(SubmitSubject, submitQueueGroup, func(m *nats.Msg) {
		if !srv.replyAllowed(m) {
			return
		}
		cost := submitCost(m)
		mu.Lock()
		if closed {
			mu.Unlock()
			return
		}
		if held > 0 && held+cost > srv.Backlog {
			mu.Unlock()
			srv.respond(m, SubmitReply{Error: errSubmitBusy, Status: http503, RetryAfter: srv.RetryAfter})
			return
		}
		held += cost
		wg.Add(1)
		mu.Unlock()
		go func() {
			defer func() {
				mu.Lock()
				held -= cost
				mu.Unlock()
				wg.Done()
			}()
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-slots }()
			srv.answer(ctx, m)
		}()
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", SubmitSubject, err)
	}
	// The callback keeps pace with a flood unless it is starved of CPU (the answers in
	// flight parsing their bodies): room for a few backlogs keeps a short stall from
	// dropping requests.
	if err := sub.SetPendingLimits(-1, submitPendingBacklogs*srv.Backlog); err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("subscribe %s: %w", SubmitSubject, err)
	}
	<-ctx.Done()
	err = sub.Unsubscribe()
	mu.Lock()
	closed = true
	mu.Unlock()
	wg.Wait()
	if err != nil && s.nc.IsConnected() {
		return fmt.Errorf("unsubscribe %s: %w", SubmitSubject, err)
	}
	return nil
}

// http503 is the status of a busy reply (the broker speaks no HTTP otherwise).
const http503 = 503

// submitCost is what a request counts against the backlog.
func submitCost(m *nats.Msg) int {
	n := len(m.Data) + submitOverhead
	for k, vs := range m.Header {
		for _, v := range vs {
			n += len(k) + len(v)
		}
	}
	return n
}

// replyAllowed reports whether m may be answered: it has a reply subject, an inbox. The
// others are logged (at a bounded rate) and dropped.
func (srv *SubmitServer) replyAllowed(m *nats.Msg) bool {
	if m.Reply == "" {
		srv.refusals.warn(srv.Logger, "job submit without a reply subject ignored", "subject", m.Subject)
		return false
	}
	if !inboxReply(m.Reply) {
		srv.refusals.warn(srv.Logger, "job submit with a reply subject that is not an inbox refused", "reply", m.Reply)
		return false
	}
	return true
}

func (srv *SubmitServer) answer(ctx context.Context, m *nats.Msg) {
	req := SubmitRequest{Data: m.Data, IdempotencyKeys: headerValues(m.Header, "Idempotency-Key")}
	srv.respond(m, srv.Answer(ctx, req))
}

// respond sends reply to m, or a short error with its status when it does not fit in a
// message.
func (srv *SubmitServer) respond(m *nats.Msg, reply SubmitReply) {
	data, _ := json.Marshal(reply)
	err := m.Respond(data)
	if errors.Is(err, nats.ErrMaxPayload) && reply.JobID == "" {
		// An error that quotes the request at length (the gateway clips what it quotes;
		// this is the guard behind that): the client gets the status and a short reason,
		// not a timeout that leaves it guessing whether a job was made.
		srv.oversized.warn(srv.Logger, "nats submit reply too large, sent a short error instead",
			"status", reply.Status, "reply_bytes", len(data))
		data, _ = json.Marshal(SubmitReply{Error: errReplyTooLarge, Status: reply.Status, RetryAfter: reply.RetryAfter})
		err = m.Respond(data)
	}
	if err != nil {
		srv.replyFailures.warn(srv.Logger, "nats submit reply", "err", err)
	}
}

// errReplyTooLarge is the error a submit is answered with when its own does not fit in a
// NATS message.
const errReplyTooLarge = "request refused; the reason is too long for a NATS reply"

// headerValues returns the values of the header name in h under any spelling of the name.
func headerValues(h nats.Header, name string) []string {
	var vs []string
	for k, v := range h {
		if strings.EqualFold(k, name) {
			vs = append(vs, v...)
		}
	}
	return vs
}

// replyPrefixes are the reply subjects a submit is answered on: a requester's inbox in
// foreman's own account ("_INBOX.", nats.NewInbox), and the reply the server makes up for a
// request that came through a service import, i.e. from a client account ("_R_."). Any
// other reply subject is forged: answering it would publish, with foreman's rights, into a
// subject the sender chose, such as a job record ($KV.FOREMAN_JOBS.job.<id>) or the queue.
var replyPrefixes = []string{"_INBOX.", "_R_."}

// gatewayReplyPrefix starts the reply of a request from another cluster of a super-cluster:
// "_GR_.<cluster hash>.<server hash>.<the requester's reply>", published there as that reply.
const gatewayReplyPrefix = "_GR_."

// inboxReply reports whether reply is a literal subject under one of replyPrefixes, maybe
// behind a gateway prefix.
func inboxReply(reply string) bool {
	if rest, ok := strings.CutPrefix(reply, gatewayReplyPrefix); ok {
		parts := strings.SplitN(rest, ".", 3)
		return len(parts) == 3 && len(parts[0]) == 6 && len(parts[1]) == 6 && inboxReply(parts[2])
	}
	ok := false
	for _, p := range replyPrefixes {
		if strings.HasPrefix(reply, p) && len(reply) > len(p) {
			ok = true
		}
	}
	if !ok || strings.ContainsAny(reply, " \t\r\n*>") {
		return false
	}
	for _, tok := range strings.Split(reply, ".") {
		if tok == "" {
			return false
		}
	}
	return true
}
