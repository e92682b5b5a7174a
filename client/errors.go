package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// APIError is an error answer from foreman: the HTTP status and the {"error": "..."} text.
type APIError struct {
	// Status is the HTTP status (that of the stream, 200, for an error that ended a
	// streamed Chat or Generate), or, for a NATS submit, the status POST /jobs answers.
	Status int
	// Message is foreman's {"error": "..."} text, or the body when it is no such JSON.
	Message string
	// RetryAfter is how long foreman asks to wait before trying again (its Retry-After
	// header, sent with a 503 or 429: a full queue, a store briefly unavailable, a
	// program over its share); 0 when it named none.
	RetryAfter time.Duration
	// Raw is set when the answer was no {"error": "..."} JSON, which foreman always
	// sends: a proxy's or captive portal's page, a router's plain text, an empty body.
	// Message is then that body as it came (at most 64 KiB), not words of foreman's.
	Raw bool
}

// Is makes errors.Is match foreman's refusals a caller acts on: ErrNotFound (404),
// ErrUnauthorized (401), ErrQueueFull (503 "queue full"), and ErrJobCanceled for the
// answer of a Chat or Generate whose job was canceled (DELETE /jobs/{id}): a 409 "job
// canceled", or that error ending a stream already begun. foreman's answer carries no
// code beyond its status, so a full queue is told from its other 503s by its words.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrNotFound:
		// A 404 page that is not foreman's (a proxy's, a path foreman does not serve)
		// says nothing of a job, artifact or model.
		return e.Status == http.StatusNotFound && !e.Raw
	case ErrUnauthorized:
		return e.Status == http.StatusUnauthorized
	case ErrQueueFull:
		return e.Status == http.StatusServiceUnavailable && e.Message == queueFullMessage
	case ErrJobCanceled:
		return (e.Status == http.StatusConflict || e.Status/100 == 2) &&
			(e.Message == canceledMessage || strings.HasPrefix(e.Message, canceledMessage+": "))
	}
	return false
}

// foreman's words for a full queue and for a sync call's job canceled (the gateway's
// statusOf).
const (
	queueFullMessage = "queue full"
	canceledMessage  = "job canceled"
)

func (e *APIError) Error() string {
	switch {
	case e.Message == "":
		return fmt.Sprintf("%d %s", e.Status, http.StatusText(e.Status))
	case e.Raw:
		// Another server's page (up to 64 KiB of HTML): its status and its start, on one
		// line; Message keeps it whole.
		ex := strings.Join(strings.Fields(e.Message), " ")
		if r := []rune(ex); len(r) > rawExcerpt {
			ex = string(r[:rawExcerpt]) + "…"
		}
		return fmt.Sprintf("%d %s, an answer not foreman's: %s", e.Status, http.StatusText(e.Status), ex)
	}
	return e.Message
}

// rawExcerpt bounds the characters of a Raw answer that Error quotes.
const rawExcerpt = 200

// Sentinels for errors.Is.
var (
	// ErrJobFailed matches every *JobError: the job ended failed or canceled.
	ErrJobFailed = errors.New("job failed")
	// ErrJobCanceled matches a *JobError of a canceled job.
	ErrJobCanceled = errors.New("job canceled")
	// ErrUnreachable matches a *ConnectionError: foreman could not be reached.
	ErrUnreachable = errors.New("foreman is unreachable")
	// ErrCutShort matches a *CutShortError: foreman had the whole request, and the
	// connection broke before its answer ended.
	ErrCutShort = errors.New("the answer was cut short")
	// ErrNotFound matches an *APIError 404: no such job, artifact or model.
	ErrNotFound = errors.New("not found")
	// ErrUnauthorized matches an *APIError 401: foreman (FOREMAN_AUTH_TOKEN set) wants a
	// token and got none (WithToken) or another.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrQueueFull matches the *APIError 503 of a full queue (FOREMAN_MAX_QUEUE jobs
	// wait): no job was made; submit again after its RetryAfter.
	ErrQueueFull = errors.New("queue full")
	// ErrNoAnswer matches a *NoAnswerError: a request of a wait got no answer within
	// WithAnswerTimeout.
	ErrNoAnswer = errors.New("no answer from foreman")
)

// NoAnswerError ends a wait (Submit, Wait, Watch, Chat, Generate) whose request foreman
// took and did not answer within WithAnswerTimeout: its process stopped, or its job
// store hung; or that a proxy in front of foreman answered in its place, with a 5xx page
// (Instead), until the bound ran out. The job, if it was made, goes on: Wait or Watch follows it later (a Chat's
// or Generate's job is canceled once foreman sees its caller gone). It matches
// ErrNoAnswer and context.DeadlineExceeded with errors.Is.
type NoAnswerError struct {
	// URL is the base URL the client talks to, a password or token in it shown as "xxxxx".
	URL string
	// Request is the request that went unanswered, e.g. "GET /jobs/01J…", or
	// "NATS foreman.jobs.submit" for a submit made on NATS.
	Request string
	// Within is the bound (WithAnswerTimeout).
	Within time.Duration
	// JobID is the job waited for, "" when it was not known yet.
	JobID string
	// Silent: the request checked on a Chat's or Generate's answer that had been silent
	// meanwhile.
	Silent bool
	// Instead is the last answer that came in foreman's place, if one did: a 5xx that is
	// no foreman error JSON (Raw), the page of a proxy in front of foreman that could
	// not reach it (502, 503) or had no answer from it in time (504). nil when nothing
	// answered.
	Instead *APIError
}

func (e *NoAnswerError) Error() string {
	msg := fmt.Sprintf("client: no answer from %s within %s to %s", e.URL, e.Within, e.Request)
	if e.Silent {
		msg += ", the answer silent meanwhile"
	}
	if e.JobID != "" {
		msg += " (job " + e.JobID + ")"
	}
	if e.Instead != nil {
		msg += "; in its place, what answers at that address (a proxy?) answered " + e.Instead.Error()
	}
	return msg
}

// Is makes errors.Is match ErrNoAnswer and context.DeadlineExceeded.
func (e *NoAnswerError) Is(target error) bool {
	return target == ErrNoAnswer || target == context.DeadlineExceeded
}

// JobError reports a job that ended without a result.
type JobError struct {
	// Job is the job's final record.
	Job *Job
}

func (e *JobError) Error() string {
	msg := e.Job.Error
	if msg == "" {
		msg = string(e.Job.State)
	}
	return fmt.Sprintf("job %s %s: %s", e.Job.ID, e.Job.State, msg)
}

// Is makes errors.Is match ErrJobFailed always and ErrJobCanceled for a canceled job.
func (e *JobError) Is(target error) bool {
	return target == ErrJobFailed || (target == ErrJobCanceled && e.Job.State == StateCanceled)
}

// ConnectionError is a request that did not reach foreman whole (refused, DNS, a reset
// while it was sent), or that the http.Client's own Timeout ended before an answer.
type ConnectionError struct {
	// URL is the base URL the client talks to, a password or token in it shown as "xxxxx".
	URL string
	Err error
}

func (e *ConnectionError) Error() string { return fmt.Sprintf("cannot reach %s: %v", e.URL, e.Err) }

// Unwrap returns the transport error.
func (e *ConnectionError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrUnreachable) true.
func (e *ConnectionError) Is(target error) bool { return target == ErrUnreachable }

// CutShortError is a request whose connection broke after foreman had it whole, before
// or during its answer (foreman stopped or restarted, a proxy between cut it). Unlike a
// *ConnectionError the request reached foreman: a job it asked for may have been made,
// and may have run in part or whole, so sending the request again is not always harmless
// (a sync call's job is canceled once its caller is gone, ADR-0024; a /jobs job runs on;
// a submit with an IdempotencyKey is safe to send again).
type CutShortError struct {
	// URL is the base URL the client talks to, a password or token in it shown as "xxxxx".
	URL string
	Err error
}

func (e *CutShortError) Error() string {
	return fmt.Sprintf("the answer from %s was cut short: %v", e.URL, e.Err)
}

// Unwrap returns the transport error.
func (e *CutShortError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrCutShort) true.
func (e *CutShortError) Is(target error) bool { return target == ErrCutShort }

// ErrAnswerTooLarge matches the error of an answer larger than any foreman sends (a
// server gone wrong, or not foreman at all): the client stops reading it.
var ErrAnswerTooLarge = errors.New("the server's answer is too large")

// retryAfter reads a Retry-After header: seconds, or an HTTP date (how long until then);
// 0 when absent, malformed or past.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, maxRetryAfter)) * time.Second
	}
	if at, err := http.ParseTime(v); err == nil && at.After(now) {
		return min(at.Sub(now), maxRetryAfter*time.Second)
	}
	return 0
}

// maxRetryAfter (seconds) bounds what a Retry-After can ask for: a day.
const maxRetryAfter = 24 * 60 * 60

// ErrNotForeman matches a *ForeignAnswerError: a success answer that is no JSON foreman
// sends, from whatever answers at the client's URL instead of foreman.
var ErrNotForeman = errors.New("the answer does not look like foreman's")

// ForeignAnswerError is a success (2xx) answer that is not the JSON object foreman
// answers with (for Chat and Generate: that does not begin with a chunk of Ollama's, a
// JSON object naming its model): a captive portal's login page, a proxy's or another
// server's page or JSON, a router's plain text, an empty body. Its status and
// Content-Type tell whose it is.
type ForeignAnswerError struct {
	// URL is the base URL the client talks to, a password or token in it shown as "xxxxx".
	URL string
	// Method and Path are the request's (Path with its query).
	Method, Path string
	// Status is the answer's HTTP status; ContentType its Content-Type header.
	Status      int
	ContentType string
	// Excerpt is the start of the body (at most 200 characters, white space runs made
	// one space); empty for an empty body.
	Excerpt string
}

func (e *ForeignAnswerError) Error() string {
	ct := e.ContentType
	if ct == "" {
		ct = "none"
	}
	body := "an empty body"
	if e.Excerpt != "" {
		body = strconv.Quote(e.Excerpt)
	}
	return fmt.Sprintf("client: %s %s: %s answered %d %s (Content-Type %s) with %s, which does not look like foreman: "+
		"another server, a captive portal or a proxy answers at that address",
		e.Method, e.Path, e.URL, e.Status, http.StatusText(e.Status), ct, body)
}

// Is makes errors.Is(err, ErrNotForeman) true.
func (e *ForeignAnswerError) Is(target error) bool { return target == ErrNotForeman }

// foreignAnswer is the error of answer data (to method path, with resp's status and
// Content-Type) that is no JSON object foreman sends.
func (c *Client) foreignAnswer(resp *http.Response, data []byte, method, path string) error {
	ex := strings.Join(strings.Fields(strings.ToValidUTF8(string(data[:min(len(data), 4*rawExcerpt)]), "\uFFFD")), " ")
	if r := []rune(ex); len(r) > rawExcerpt {
		ex = string(r[:rawExcerpt]) + "…"
	}
	return &ForeignAnswerError{URL: c.shown, Method: method, Path: path, Status: resp.StatusCode,
		ContentType: resp.Header.Get("Content-Type"), Excerpt: ex}
}
