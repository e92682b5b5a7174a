package gateway

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// natsSubmitTimeout bounds one submit (model check with the target plus the store writes).
const natsSubmitTimeout = 30 * time.Second

// natsSubmitConcurrency bounds the submits answered at once.
const natsSubmitConcurrency = 16

// RunNATSSubmit answers job submissions by NATS request/reply on foreman.jobs.submit
// until ctx ends. The request data is a POST /jobs body, checked exactly as over HTTP;
// an "Idempotency-Key" header (its name in any case) works as the HTTP header does. It listens on the store's
// in-process connection, so clients reach it through the NATS listener's permissions.
func (s *Server) RunNATSSubmit(ctx context.Context) error {
	err := s.store.ServeSubmit(ctx, broker.SubmitServer{
		Answer: s.answerSubmit, Concurrency: natsSubmitConcurrency, Logger: s.log,
		RetryAfter: s.retryAfterSeconds(),
	})
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	return nil
}

// answerSubmit decides one NATS submit as POST /jobs would.
func (s *Server) answerSubmit(ctx context.Context, req broker.SubmitRequest) broker.SubmitReply {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.natsSubmitWait)
	defer cancel()
	id, err := s.natsSubmit(ctx, req)
	if err != nil {
		status, msg := statusOn(err, "/jobs") // the words POST /jobs answers
		s.logFailure("nats submit failed", status, err)
		reply := broker.SubmitReply{Error: msg, Status: status}
		if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
			reply.RetryAfter = s.retryAfterSeconds() // as writeError's Retry-After
		}
		return reply
	}
	return broker.SubmitReply{JobID: id}
}

// natsSubmit submits one NATS job request, bounded by the body limit as over HTTP.
func (s *Server) natsSubmit(ctx context.Context, req broker.SubmitRequest) (string, error) {
	if int64(len(req.Data)) > s.cfg.MaxBodyBytes {
		return "", refuse(ErrTooLarge, "request body too large")
	}
	key, err := natsIdempotencyKey(req.IdempotencyKeys)
	if err != nil {
		return "", err
	}
	id, _, err := s.submitJob(context.WithValue(ctx, natsCallerKey{}, true), req.Data, key, nil)
	return id, err
}

// natsIdempotencyKey is the one key a NATS submit's Idempotency-Key headers give: the
// same value however often it was sent. Different values are a 400: HTTP would take the
// first, but the spellings of a header name in a NATS message keep no order between them,
// so there is no first to take.
func natsIdempotencyKey(values []string) (string, error) {
	if len(values) == 0 {
		return "", nil
	}
	for _, v := range values[1:] {
		if v != values[0] {
			return "", badRequest("Idempotency-Key: sent more than once with different values")
		}
	}
	return values[0], nil
}

// natsCallerKey marks the context of a NATS submit: its caller proved no token, so it
// may not name a named token's program (namedProgramCheck).
type natsCallerKey struct{}

// namedProgramCheck refuses a NATS submit that names a named token's program: it would
// take that program's limit and turns without holding its token.
func (s *Server) namedProgramCheck(ctx context.Context, program string) error {
	if nats, _ := ctx.Value(natsCallerKey{}).(bool); !nats || program == "" {
		return nil
	}
	for _, nt := range s.cfg.AuthTokens {
		if nt.Program == program {
			return refuse(ErrForbidden, fmt.Sprintf("program %q belongs to a named token", program))
		}
	}
	return nil
}
