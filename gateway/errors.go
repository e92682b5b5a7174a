package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"syscall"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// The gateway's own refusals. Each *Error wraps one of them (errors.Is works), and
// statusOf alone says which HTTP status it is.
var (
	ErrInvalid             = errors.New("invalid request")               // 400
	ErrUnauthorized        = errors.New("unauthorized")                  // 401
	ErrForbidden           = errors.New("forbidden")                     // 403
	ErrNoRoute             = errors.New("no such route")                 // 404
	ErrMethodNotAllowed    = errors.New("method not allowed")            // 405
	ErrBodyTimeout         = errors.New("request body too slow")         // 408
	ErrConflict            = errors.New("conflict")                      // 409
	ErrTooLarge            = errors.New("request body too large")        // 413
	ErrRangeNotSatisfiable = errors.New("range not satisfiable")         // 416
	ErrKeyReused           = errors.New("idempotency key reused")        // 422
	ErrProgramLimit        = errors.New("program over its queue limit")  // 429
	ErrInternal            = errors.New("internal error")                // 500
	ErrBadUpstream         = errors.New("no valid answer from upstream") // 502
	ErrUnavailable         = errors.New("unavailable")                   // 503
)

// Error is one of the gateway's refusals (Kind, a sentinel above) with a message safe to
// show the client.
type Error struct {
	Kind    error
	Message string
	// OwnHandler marks a refusal that Ollama gives in its own handler, after its OpenAI
	// layer has read the body: that layer words every such error an "api_error" on /v1,
	// whatever its status (v0.17.4 middleware BaseWriter.writeError), while its own checks
	// of the body are "invalid_request_error"s.
	OwnHandler bool
}

func (e *Error) Error() string { return e.Message }

// Unwrap makes errors.Is(err, e.Kind) true.
func (e *Error) Unwrap() error { return e.Kind }

// refuse is a refusal of the given kind.
func refuse(kind error, msg string) error { return &Error{Kind: kind, Message: msg} }

// badRequest is an ErrInvalid refusal (400) with the given message.
func badRequest(msg string) error { return refuse(ErrInvalid, msg) }

// handlerRefusal is a 400 that Ollama gives in its own handler (a model name it cannot
// take), which its OpenAI layer passes on as an "api_error".
func handlerRefusal(msg string) error {
	return &Error{Kind: ErrInvalid, Message: msg, OwnHandler: true}
}

// maxQuoted bounds the bytes of a client's value that an error message quotes back.
const maxQuoted = 200

// clipInput is a value the client sent, as an error message quotes it: its first
// maxQuoted bytes then "…". A value may be as large as the body, and a message that quoted
// it whole could be larger still (json.Unmarshal turns each invalid UTF-8 byte into U+FFFD,
// 3 bytes; %q and JSON escape more): larger than a NATS reply may be, so a refused NATS
// submit got no answer at all.
func clipInput(s string) string {
	if c, cut := broker.Clip(s, maxQuoted); cut {
		return c + "…"
	}
	return s
}

// ErrModelNotFound is returned when the target does not have a model (after a re-poll).
var ErrModelNotFound = errors.New("model not found")

// ModelNotFoundError is ErrModelNotFound for one model; the client sees Ollama's own
// wording for the route (messageFor), so clients that match on it keep working.
type ModelNotFoundError struct{ Model string }

func (e *ModelNotFoundError) Error() string {
	return fmt.Sprintf("model %q not found, try pulling it first", clipInput(e.Model))
}

// messageFor is what Ollama 0.17 answers on path for a model it does not have: the
// embedding routes suggest a pull, the others name the model in single quotes.
func (e *ModelNotFoundError) messageFor(path string) string {
	switch path {
	case "/api/embed", "/api/embeddings", "/v1/embeddings":
		return e.Error()
	}
	return fmt.Sprintf("model '%s' not found", clipInput(e.Model))
}

// Is makes errors.Is(err, ErrModelNotFound) true.
func (e *ModelNotFoundError) Is(target error) bool { return target == ErrModelNotFound }

// statusOn is statusOf for a request to path: a model not found is worded as Ollama
// words it there (messageFor). A NATS submit is a POST /jobs, and is worded as one.
func statusOn(err error, path string) (int, string) {
	status, msg := statusOf(err)
	var notFound *ModelNotFoundError
	if errors.As(err, &notFound) {
		msg = notFound.messageFor(path)
	}
	return status, msg
}

// statusOf maps an error to the HTTP status and the message the client sees. It is the
// only place that does so: over HTTP (writeError, in the route's shape) and over NATS
// (the submit reply's status). Statuses that come from the target are data it carries
// on: an *ollama.HTTPError's, and a failed job's (the worker's Foreman-Status, in
// broker.JobError.Status).
func statusOf(err error) (int, string) {
	var (
		e       *Error
		httpErr *ollama.HTTPError
		connErr *ollama.ConnectionError
		maxErr  *http.MaxBytesError
		jobErr  *broker.JobError
	)
	switch {
	case errors.As(err, &e):
		status := http.StatusInternalServerError
		switch e.Kind {
		case ErrInvalid:
			status = http.StatusBadRequest
		case ErrUnauthorized:
			status = http.StatusUnauthorized
		case ErrForbidden:
			status = http.StatusForbidden
		case ErrNoRoute:
			status = http.StatusNotFound
		case ErrMethodNotAllowed:
			status = http.StatusMethodNotAllowed
		case ErrBodyTimeout:
			status = http.StatusRequestTimeout
		case ErrConflict:
			status = http.StatusConflict
		case ErrTooLarge:
			status = http.StatusRequestEntityTooLarge
		case ErrRangeNotSatisfiable:
			status = http.StatusRequestedRangeNotSatisfiable
		case ErrKeyReused:
			status = http.StatusUnprocessableEntity
		case ErrProgramLimit:
			status = http.StatusTooManyRequests
		case ErrBadUpstream:
			status = http.StatusBadGateway
		case ErrUnavailable:
			status = http.StatusServiceUnavailable
		}
		return status, e.Message
	case errors.As(err, &jobErr):
		// A sync job that ended without its answer, before any byte reached the client. A
		// job canceled by someone else (DELETE /jobs/{id}) is a 409: the request conflicts
		// with the job's state, and unlike a 503 it does not invite an automatic retry
		// that would undo the cancel (the OpenAI and Anthropic SDKs, which do retry a 409,
		// are told not to by writeError). A failed job answers the target's status, or 502
		// when the target gave none (attempts exhausted on connection errors): the
		// gateway could not get a valid answer from upstream.
		if callerTakenForGone(err) {
			return http.StatusServiceUnavailable, "job canceled: this foreman was out of touch with NATS for so long " +
				"that the other foremen took it for gone and gave up its waiting calls; retry"
		}
		if jobErr.State == broker.StateCanceled {
			if jobErr.Message == "" {
				return http.StatusConflict, "job canceled"
			}
			return http.StatusConflict, "job canceled: " + jobErr.Message
		}
		status := http.StatusBadGateway
		if jobErr.Status != 0 {
			status = jobErr.Status
		}
		if jobErr.Message == "" {
			return status, "job failed"
		}
		return status, jobErr.Message
	case errors.As(err, &maxErr):
		return http.StatusRequestEntityTooLarge, "request body too large (limit " + strconv.FormatInt(maxErr.Limit, 10) + " bytes)"
	case errors.As(err, &httpErr):
		return httpErr.StatusCode, httpErr.Message
	case errors.As(err, &connErr):
		return http.StatusBadGateway, "ollama is unreachable: " + connErr.Error()
	case errors.Is(err, ollama.ErrBadAnswer):
		return http.StatusBadGateway, err.Error()
	case errors.Is(err, ollama.ErrBadPath):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, ErrModelNotFound):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, broker.ErrUnavailable):
		// A cluster electing a leader: the same request succeeds in a few seconds.
		return http.StatusServiceUnavailable, "job store temporarily unavailable, retry shortly"
	case errors.Is(err, broker.ErrQueueFull):
		return http.StatusServiceUnavailable, "queue full"
	case errors.Is(err, broker.ErrStorageFull):
		return http.StatusServiceUnavailable, "storage full"
	case broker.NeedsRestart(err) && errors.Is(err, syscall.EROFS):
		// The disk went read-only under the store (a disk error): room would not help.
		return http.StatusServiceUnavailable, "job store cannot write (see GET /healthz): its data directory went read-only " +
			"(the disk's file system was remounted read-only, after a disk error, say); fix the disk, then restart foreman"
	case broker.NeedsRestart(err):
		// A stream that failed a write (a full disk) takes none until foreman restarts.
		return http.StatusServiceUnavailable, "job store cannot write (see GET /healthz): foreman needs a restart (once its disk has room, if it is full)"
	case errors.Is(err, broker.ErrStoreFailed):
		// A fault that may pass (a data directory that could not be checked).
		return http.StatusServiceUnavailable, "job store cannot write for now (see GET /healthz)"
	case errors.Is(err, broker.ErrNotFound), errors.Is(err, broker.ErrArtifactNotFound):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, broker.ErrBadID), errors.Is(err, broker.ErrBadArtifactName), errors.Is(err, broker.ErrBadModel), errors.Is(err, broker.ErrJobTooLarge):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, broker.ErrTerminal), errors.Is(err, broker.ErrIllegalTransition), errors.Is(err, broker.ErrConflict):
		return http.StatusConflict, err.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, "timed out"
	case errors.Is(err, context.Canceled):
		return 499, "request canceled"
	}
	return http.StatusInternalServerError, "internal error"
}

// retryAfterSeconds is the Retry-After of a 503 or 429 refusal, in whole seconds.
func (s *Server) retryAfterSeconds() int { return int(s.cfg.RetryAfter.Seconds() + 0.5) }

// writeError sends err as {"error": "..."}; 5xx errors are logged with their detail, and
// with the job a queued call made when its answer names one. A refused body the client
// is still sending is read out once the answer is sent (refuseUnread).
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var unread *unreadBody
	if errors.As(err, &unread) {
		defer unread.readOut(w)
	}
	status, msg := statusOn(err, r.URL.Path)
	args := []any{"method", r.Method, "path", r.URL.Path}
	if id := w.Header().Get(HeaderJobID); id != "" {
		// A queued call's job, which its answer names: the worker's lines say what it met.
		args = append(args, "job_id", id)
	}
	s.logFailure("request failed", status, err, args...)
	if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", strconv.Itoa(s.retryAfterSeconds()))
	}
	if jobCanceled(err) {
		// The OpenAI and Anthropic SDKs retry a 409 on their own (twice by default), each
		// retry a new job: the cancel would not stick. They all heed this header.
		w.Header().Set("X-Should-Retry", "false")
	}
	var e *Error
	ownHandler := errors.As(err, &e) && e.OwnHandler
	switch {
	case r.URL.Path == "/v1/messages":
		writeCompatError(w, status, ownHandler, anthropicError(status, msg))
		return
	case strings.HasPrefix(r.URL.Path, "/v1/"):
		writeCompatError(w, status, ownHandler, openAIError(status, msg, ownHandler))
		return
	case strings.HasPrefix(r.URL.Path, "/api/"):
		writeGinJSON(w, status, map[string]string{"error": msg})
		return
	}
	writeJSON(w, status, map[string]string{"error": msg})
}

// writeCompatError writes an error of Ollama's OpenAI or Anthropic layer with the bytes
// that layer's source of it writes: a request its own checks refuse (a 400 of no handler,
// invalid_request_error on /v1) through gin, and the rest through the layer's writer,
// which encodes its handler's errors with a json.Encoder as plain "application/json".
// SDKs hand the raw body to their callers (the AI SDK's APICallError.responseBody).
func writeCompatError(w http.ResponseWriter, status int, ownHandler bool, v any) {
	if status == http.StatusBadRequest && !ownHandler {
		writeGinJSON(w, status, v)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeGinJSON writes v as Ollama's router (gin's c.JSON) writes its handlers' JSON:
// without the newline a json.Encoder ends it with.
func writeGinJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeJSON(w, status, v)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// jobCanceled reports whether err is a sync job's end by a cancel (DELETE /jobs/{id}).
func jobCanceled(err error) bool {
	var jobErr *broker.JobError
	return errors.As(err, &jobErr) && jobErr.State == broker.StateCanceled && !callerTakenForGone(err)
}

// callerTakenForGone reports whether err is a sync job canceled as abandoned
// (broker.CallerGoneReason) while its caller still waits here for it: another foreman
// found this one's presence lapsed (this foreman cut off from NATS for a presence TTL, a
// frozen node) and took it for dead. Nobody asked for that cancel, and nothing
// restarted: the caller is told to retry (503), not that its job was canceled for good.
func callerTakenForGone(err error) bool {
	var jobErr *broker.JobError
	return errors.As(err, &jobErr) && jobErr.State == broker.StateCanceled && jobErr.Message == broker.CallerGoneReason
}

// logFailure logs a request that failed with status: an error for a 5xx, but for a
// refusal by design (refusalReason), which is counted in foreman_requests_refused_total
// and logged at debug: under load a full queue refuses request after request, and the
// operator's log would drown in them. The refusals an operator mends with a setting (a
// full queue, the bodies in flight over their budget) are warned of too, once per
// failurelog.Every for each, with the count of those not warned of: at the default log
// level a full queue turning every caller away for hours was not one line. The same 5xx
// failure (its status and error
// text, failurelog.Key) again within failurelog.Every is logged at debug too, and counted
// in the next error line of it ("repeats"): a fault that fails every request alike (a
// full disk refusing every submit, an Ollama down answering every pass-through call) is
// one line every 10 s, not one per request written as fast as clients retry, maybe onto
// the full disk.
func (s *Server) logFailure(msg string, status int, err error, args ...any) {
	if reason := refusalReason(err); reason != "" {
		s.jobMetrics.refused.WithLabelValues(reason).Inc()
		args = append(args, "reason", reason, "status", status, "err", err)
		if warning := refusalWarnings[reason]; warning != "" {
			if ok, repeats := s.failures.Admit("refused " + reason); ok {
				if repeats > 0 {
					args = append(args, "repeats", repeats)
				}
				s.log.Warn(warning, args...)
				return
			}
		}
		s.log.Debug("request refused", args...)
		return
	}
	if status < 500 {
		return
	}
	args = append(args, "status", status, "err", err)
	if errors.Is(err, broker.ErrStorageFull) {
		args = append(args, "hint", storageFullHint)
	}
	ok, repeats := s.failures.Admit(failurelog.Key(strconv.Itoa(status), err))
	if !ok {
		s.log.Debug(msg, args...)
		return
	}
	if repeats > 0 {
		args = append(args, "repeats", repeats)
	}
	s.log.Error(msg, args...)
}

// storageFullHint is what an operator does about a store at its storage limit: the
// embedded server's limit is set as it starts, from the space then free (ADR-0094), and
// finished jobs free their room when FOREMAN_JOB_TTL passes; on a shared NATS the limit
// is the account's or the server's.
const storageFullHint = "the job store is at its storage limit: free space on the disk of FOREMAN_DATA_DIR and restart foreman " +
	"(the limit is set at start from the space then free), or shorten FOREMAN_JOB_TTL; on a shared NATS, raise its JetStream limits"

// refusalWarnings are the lines of the refusals by design that an operator mends with a
// setting (see logFailure), by their refusalReason. A program over its own limit is its
// caller's to pace, and the artifact downloads' cap has no setting.
var refusalWarnings = map[string]string{
	"queue_full": "request refused: the queue is full (FOREMAN_MAX_QUEUE jobs wait); callers get 503 until jobs end: " +
		"the target is slower than its callers, or down (the next in 10s are counted in foreman_requests_refused_total only)",
	"body_budget": "request refused: the request bodies in flight are over FOREMAN_MAX_BODY_BYTES_IN_FLIGHT; callers get 503 " +
		"until some are done (the next in 10s are counted in foreman_requests_refused_total only)",
}

// refusalReason names the refusals foreman makes by design: a full queue, a program over
// its limit, request bodies in flight over their budget, artifact downloads over their
// cap. Anything else is "".
func refusalReason(err error) string {
	switch {
	case errors.Is(err, broker.ErrQueueFull):
		return "queue_full"
	case errors.Is(err, ErrProgramLimit):
		return "program_limit"
	case errors.Is(err, errOverBudget):
		return "body_budget"
	case errors.Is(err, errArtifactReadsFull):
		return "artifact_downloads"
	}
	return ""
}

// openAIError is the error body of Ollama's OpenAI-compatible routes, which OpenAI SDKs
// read as error.message.
func openAIError(status int, msg string, ownHandler bool) any {
	// Ollama 0.17's OpenAI layer answers "invalid_request_error" for a request its own
	// checks refuse and "api_error" for the rest: a missing model, and whatever its
	// handler behind refuses (ownHandler).
	kind := "api_error"
	if status == http.StatusBadRequest && !ownHandler {
		kind = "invalid_request_error"
	}
	type body struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   any     `json:"param"`
		Code    *string `json:"code"`
	}
	return map[string]body{"error": {Message: msg, Type: kind}}
}

// anthropicError is the error body of Ollama's Anthropic-compatible route (v0.17.4
// anthropic.NewError), which Anthropic SDKs read as error.type and error.message. Its
// request_id is made as Ollama makes it: "req_" and 12 random bytes in lower-case hex.
func anthropicError(status int, msg string) any {
	type detail struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}
	return struct {
		Type      string `json:"type"`
		Error     detail `json:"error"`
		RequestID string `json:"request_id"`
	}{"error", detail{ollama.AnthropicErrorType(status), msg}, anthropicRequestID()}
}

// anthropicRequestID is a request_id as Ollama's anthropic.NewError makes one
// (generateID("req")): a client or a log parser that reads Ollama's ids reads these.
func anthropicRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24)
	return "req_" + hex.EncodeToString(b[:])
}

// writeJSON sends v as JSON with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
