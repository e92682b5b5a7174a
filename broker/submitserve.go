package broker

import (
	"context"
	"encoding/json"
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
	// Logger gets the requests refused for their reply subject. Default: the store's.
	Logger *slog.Logger

	// refusals keeps a flood of refused requests (any client may send them) from
	// flooding the log too.
	refusals *logLimit
}

// refusalLogEvery is how often a refused submit is logged at most; the next line says how
// many were refused since the last one.
const refusalLogEvery = 10 * time.Second

// logLimit lets one log line through per interval and counts the ones it holds back.
type logLimit struct {
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

// refused logs a request refused for its reply subject, at most once per refusalLogEvery.
func (srv *SubmitServer) refused(msg string, args ...any) {
	ok, held := srv.refusals.allow(time.Now(), refusalLogEvery)
	if !ok {
		return
	}
	if held > 0 {
		args = append(args, "more_refused_since_last_logged", held)
	}
	srv.Logger.Warn(msg, args...)
}

// ServeSubmit answers job submissions on SubmitSubject until ctx ends, in a queue group
// with every other foreman on the same NATS. A request whose reply subject is not an
// inbox gets no answer: answering it would publish, with foreman's rights, wherever the
// sender pointed. It returns once every answer started has gone out.
func (s *Store) ServeSubmit(ctx context.Context, srv SubmitServer) error {
	srv.refusals = &logLimit{}
	if srv.Concurrency <= 0 {
		srv.Concurrency = 16
	}
	if srv.Logger == nil {
		srv.Logger = s.log
	}
	// nats.go runs one subscription's callbacks one after another; a submit may wait for
	// a model re-poll, so answer in goroutines, a bounded number at a time.
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		closed bool // set after Unsubscribe; a callback still running then adds no work
	)
	slots := make(chan struct{}, srv.Concurrency)
	sub, err := s.nc.QueueSubscribe(SubmitSubject, submitQueueGroup, func(m *nats.Msg) {
		mu.Lock()
		if closed {
			mu.Unlock()
			return
		}
		wg.Add(1)
		mu.Unlock()
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			wg.Done()
			return
		}
		go func() {
			defer func() { <-slots; wg.Done() }()
			srv.answer(ctx, m)
		}()
	})
	if err != nil {
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

func (srv *SubmitServer) answer(ctx context.Context, m *nats.Msg) {
	if m.Reply == "" {
		srv.refused("job submit without a reply subject ignored", "subject", m.Subject)
		return
	}
	if !inboxReply(m.Reply) {
		srv.refused("job submit with a reply subject that is not an inbox refused", "reply", m.Reply)
		return
	}
	req := SubmitRequest{Data: m.Data, IdempotencyKeys: headerValues(m.Header, "Idempotency-Key")}
	data, _ := json.Marshal(srv.Answer(ctx, req))
	if err := m.Respond(data); err != nil {
		srv.Logger.Warn("nats submit reply", "err", err)
	}
}

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
