package ollama

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// ConnectionError means the target could not be reached or the connection
// failed before the response was complete: refused, reset, EOF before the
// headers, or a stream cut mid-way. The request may be retried.
type ConnectionError struct {
	Op  string // what was being done: "dial", "read stream", ...
	URL string
	Err error
}

func (e *ConnectionError) Error() string {
	return fmt.Sprintf("ollama %s %s: %v", e.Op, e.URL, e.Err)
}

func (e *ConnectionError) Unwrap() error { return e.Err }

// Unreachable reports whether err says the target is not there: the connection failed
// (refused, reset, cut off), nothing answered in time, or a proxy in front of it answered
// that it could not reach it (HTTPError.UpstreamDown: 502, 504). Any other answer with an
// error status is not: the target, or a proxy in front of it, is up.
func Unreachable(err error) bool {
	var ce *ConnectionError
	var he *HTTPError
	return errors.As(err, &ce) || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &he) && he.UpstreamDown()
}

// NotSent reports whether err says the request never reached the target: the connection
// to it could not be made (refused: nothing listens, the Mac restarting; no route; its
// name not found). Nothing was asked of the target, so nothing the request carries can
// have caused the failure. A connection reset or cut after it was made is not: the
// request may have been read, and may be what brought the target down.
func NotSent(err error) bool {
	var ce *ConnectionError
	var op *net.OpError
	return errors.As(err, &ce) && errors.As(ce.Err, &op) && op.Op == "dial"
}

// HTTPError means the target answered with a non-2xx status. Message is the
// text of Ollama's {"error": ...} body, or the trimmed body if it is not JSON.
type HTTPError struct {
	StatusCode int
	Message    string
}

// UpstreamDown reports whether the status is a proxy's word that the Ollama behind it is
// not there: 502 Bad Gateway (it refused or reset the proxy's connection) or 504 Gateway
// Timeout (it did not answer the proxy in time), as nginx, Caddy or `tailscale serve` in
// front of a Mac answer when the Mac is off, asleep or hung. Ollama's own server answers
// neither (v0.17.4: only its desktop app's UI proxy does), so the call is retried and the
// target waited for as after a connection error, not ended as Ollama's own "no".
func (e *HTTPError) UpstreamDown() bool {
	return e.StatusCode == http.StatusBadGateway || e.StatusCode == http.StatusGatewayTimeout
}

func (e *HTTPError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("ollama: HTTP %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	return fmt.Sprintf("ollama: HTTP %d: %s", e.StatusCode, e.Message)
}

// StallError means the target stopped sending and the request was aborted: no response
// byte within the first-byte timeout (FirstByte), or, once the body had started, no byte
// for the idle timeout; of a stream, no line or event with data, in either; of an answer
// not streamed, after its first byte, no AnswerStep of it nor its end (Trickle when bytes
// came that made none). Like a *ConnectionError the request may be retried; the target is
// reachable but not making progress (a hung runner, a wedged load).
type StallError struct {
	Op        string // "POST /api/chat"
	URL       string
	FirstByte bool          // true: no answer began (nothing, or of a stream no frame with data); false: the body stopped mid-way
	After     time.Duration // the timeout that ran out
	Trickle   bool          // bytes came in the idle timeout, but no line or event with data
	Status    int           // non-zero: the target answered this error status, whose body did not end within After
	// NotStreamed: the answer was not streamed (application/json), its progress each
	// AnswerStep of its bytes or its end; Trickle then says bytes came short of both.
	NotStreamed bool
}

// Reason says what the target failed to do, e.g. "no data for 2m0s".
func (e *StallError) Reason() string {
	if e.Status != 0 {
		return fmt.Sprintf("status %d answered, its body not whole after %s", e.Status, e.After)
	}
	if e.Trickle && e.NotStreamed {
		return "no MiB of the answer, nor its end, for " + e.After.String() + ", only a trickle of bytes"
	}
	if e.Trickle {
		return "no line or event with data for " + e.After.String() + ", only a trickle of bytes"
	}
	if e.FirstByte {
		return "no response for " + e.After.String()
	}
	return "no data for " + e.After.String()
}

func (e *StallError) Error() string { return "target stalled: " + e.Reason() }

// ErrBadAnswer means the target answered, but not as Ollama does: a body that is not the
// JSON due (another server on Ollama's port, a proxy's HTML page), or a redirect. Unlike
// a *ConnectionError, trying again will not help; the target is the wrong one or
// misconfigured.
var ErrBadAnswer = errors.New("ollama: the target's answer could not be read")

// ErrBadPath means a request's path (and query) cannot be sent to the target: it does not
// parse, or it holds what no request line may. The request is at fault, not the target.
var ErrBadPath = errors.New("ollama: bad request path")

// badAnswer is ErrBadAnswer for the answer to op ("GET /api/tags"), saying why.
func badAnswer(op string, why error) error {
	return fmt.Errorf("%w: %s: %w", ErrBadAnswer, op, why)
}

// AnthropicErrorType is the error.type Ollama's Anthropic layer (v0.17.4
// anthropic.NewError) gives an error of HTTP status code.
func AnthropicErrorType(code int) string {
	switch code {
	case http.StatusBadRequest:
		return "invalid_request_error"
	case http.StatusUnauthorized:
		return "authentication_error"
	case http.StatusForbidden:
		return "permission_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusTooManyRequests:
		return "rate_limit_error"
	case http.StatusServiceUnavailable, 529:
		return "overloaded_error"
	}
	return "api_error"
}
