package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// submitQueueGroup spreads foreman.jobs.submit requests over all foreman instances on
// one NATS, so each request creates exactly one job.
const submitQueueGroup = "foreman-submit"

// natsSubmitTimeout bounds one submit (model check with the target plus the store writes).
const natsSubmitTimeout = 30 * time.Second

// natsSubmitConcurrency bounds the submits answered at once.
const natsSubmitConcurrency = 16

// submitReply is the reply on foreman.jobs.submit: the job id, or an error with the HTTP
// status POST /jobs would have answered.
type submitReply struct {
	JobID  string `json:"job_id,omitempty"`
	Error  string `json:"error,omitempty"`
	Status int    `json:"status,omitempty"`
}

// RunNATSSubmit answers job submissions by NATS request/reply on foreman.jobs.submit
// until ctx ends. The request data is a POST /jobs body, checked exactly as over HTTP;
// an "Idempotency-Key" header works as the HTTP header does. It listens on the store's
// in-process connection, so clients reach it through the NATS listener's permissions.
func (s *Server) RunNATSSubmit(ctx context.Context) error {
	// nats.go runs one subscription's callbacks one after another; a submit may wait for
	// a model re-poll, so answer in goroutines, a bounded number at a time.
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		closed bool // set after Unsubscribe; a callback still running then adds no work
	)
	slots := make(chan struct{}, natsSubmitConcurrency)
	sub, err := s.store.Conn().QueueSubscribe(broker.SubmitSubject, submitQueueGroup, func(m *nats.Msg) {
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
			s.answerSubmit(ctx, m)
		}()
	})
	if err != nil {
		return fmt.Errorf("gateway: subscribe %s: %w", broker.SubmitSubject, err)
	}
	<-ctx.Done()
	err = sub.Unsubscribe()
	mu.Lock()
	closed = true
	mu.Unlock()
	wg.Wait()
	if err != nil && s.store.Conn().IsConnected() {
		return fmt.Errorf("gateway: unsubscribe %s: %w", broker.SubmitSubject, err)
	}
	return nil
}

func (s *Server) answerSubmit(ctx context.Context, m *nats.Msg) {
	if m.Reply == "" {
		s.log.Warn("job submit without a reply subject ignored", "subject", m.Subject)
		return
	}
	if !inboxReply(m.Reply) {
		s.log.Warn("job submit with a reply subject that is not an inbox refused", "reply", m.Reply)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, natsSubmitTimeout)
	defer cancel()
	var key string
	if m.Header != nil {
		key = m.Header.Get("Idempotency-Key")
	}
	if int64(len(m.Data)) > s.cfg.MaxBodyBytes {
		s.respond(m, submitReply{Error: "request body too large", Status: 413})
		return
	}
	id, _, err := s.submitJob(ctx, m.Data, key, nil)
	if err != nil {
		status, msg := statusOf(err)
		if status >= 500 {
			s.log.Error("nats submit failed", "status", status, "err", err)
		}
		s.respond(m, submitReply{Error: msg, Status: status})
		return
	}
	s.respond(m, submitReply{JobID: id})
}

func (s *Server) respond(m *nats.Msg, r submitReply) {
	data, _ := json.Marshal(r)
	if err := m.Respond(data); err != nil {
		s.log.Warn("nats submit reply", "err", err)
	}
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
