package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"time"
)

// within makes fn, one request of a wait, bounded by WithAnswerTimeout: should foreman
// take it and not answer in time (the caller's ctx still live), the error is a
// *NoAnswerError for req (of job jobID, if known). Only foreman's answer counts: one
// that comes in its place (inForemansPlace: a proxy in front of foreman that cannot
// reach it, or had no answer from it in time) is asked again, briskly, until foreman
// answers or the bound runs out, when the *NoAnswerError carries it (Instead). fn must
// be safe to make again (a GET).
func (c *Client) within(ctx context.Context, req, jobID string, fn func(context.Context) error) error {
	if c.answerTimeout <= 0 {
		return fn(ctx)
	}
	rctx, cancel := context.WithTimeout(ctx, c.answerTimeout)
	defer cancel()
	// took: foreman has the request whole. A request whose connection was not made (a
	// host whose packets are dropped for a while) never reached foreman: unreachable,
	// which a wait rides out, not foreman hung.
	var took atomic.Bool
	rctx = tookTrace(rctx, &took)
	var instead *APIError
	wait := min(briskFirst, c.pollInterval)
	for {
		err := fn(rctx)
		if err != nil && ctx.Err() == nil && rctx.Err() != nil {
			if !took.Load() && instead == nil {
				return &ConnectionError{URL: c.shown, Err: &notSentError{req: req, within: c.answerTimeout}}
			}
			return c.noAnswer(req, jobID, false, instead)
		}
		ae, ok := inForemansPlace(err)
		if !ok || ctx.Err() != nil {
			return err
		}
		instead = ae
		t := time.NewTimer(wait)
		select {
		case <-rctx.Done():
			t.Stop()
			if ctx.Err() != nil {
				return err
			}
			return c.noAnswer(req, jobID, false, instead)
		case <-t.C:
		}
		wait = min(2*wait, briskLast, c.pollInterval)
	}
}

// inForemansPlace reports whether err is an answer that came in foreman's place, and so
// no sign that foreman answers: a 5xx that is no foreman error JSON ({"error": "..."},
// which foreman sends with every error, a degraded foreman's 503 included), the page
// of a proxy in front of foreman (nginx's 502 or 504, Caddy's empty 502, Envoy's 503
// "no healthy upstream"), which could not reach foreman or had no answer from it in
// time. Another answer that is not foreman's (a proxy's 404 for a path it does not
// pass on, a captive portal's page) says nothing of foreman either way, and keeps the
// rules it had.
func inForemansPlace(err error) (*APIError, bool) {
	var ae *APIError
	if errors.As(err, &ae) && ae.Raw && ae.Status >= 500 {
		return ae, true
	}
	return nil, false
}

// notSentError is the cause of a *ConnectionError whose request was not sent within
// WithAnswerTimeout (its connection not made): a network timeout, as a dial's would be
// (the host did not answer), not foreman's.
type notSentError struct {
	req    string
	within time.Duration
}

func (e *notSentError) Error() string   { return fmt.Sprintf("%s: not sent within %s", e.req, e.within) }
func (e *notSentError) Timeout() bool   { return true }
func (e *notSentError) Temporary() bool { return true }

func (c *Client) noAnswer(req, jobID string, silent bool, instead *APIError) *NoAnswerError {
	return &NoAnswerError{URL: c.shown, Request: req, Within: c.answerTimeout, JobID: jobID, Silent: silent, Instead: instead}
}

// readJob is Job as a wait reads its job: bounded by WithAnswerTimeout.
func (c *Client) readJob(ctx context.Context, id string) (*Job, error) {
	var j *Job
	err := c.within(ctx, "GET /jobs/"+id, id, func(ctx context.Context) (err error) {
		j, err = c.Job(ctx, id)
		return err
	})
	return j, err
}

// silenceWatch looks after a streamed answer (Chat, Generate) under WithAnswerTimeout:
// whenever it has been silent a whole bound, foreman is asked whether it still answers,
// and the stream is ended should it not. A job waiting in the queue sends nothing for
// as long as it waits (only its early job id), so silence alone proves nothing.
type silenceWatch struct {
	c      *Client
	ctx    context.Context // the stream's: canceled when foreman gave no answer
	cancel context.CancelFunc
	heard  atomic.Int64 // signs of foreman on the stream: a 1xx, the headers, answer bytes
	jobID  atomic.Value // string: the stream's job, once told
	err    *NoAnswerError
	done   chan struct{}
}

func (c *Client) watchSilence(ctx context.Context) *silenceWatch {
	w := &silenceWatch{c: c, done: make(chan struct{})}
	w.ctx, w.cancel = context.WithCancel(ctx)
	go w.run()
	return w
}

// heardFrom notes a sign of foreman on the stream, which names its job when id != "".
func (w *silenceWatch) heardFrom(id string) {
	if id != "" {
		w.jobID.Store(id)
	}
	w.heard.Add(1)
}

func (w *silenceWatch) run() {
	defer close(w.done)
	t := time.NewTicker(w.c.answerTimeout)
	defer t.Stop()
	seen := w.heard.Load()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-t.C:
		}
		if n := w.heard.Load(); n != seen {
			seen = n
			continue
		}
		id, _ := w.jobID.Load().(string)
		req, path := "GET /healthz", "/healthz"
		if p, err := jobPath(id); id != "" && err == nil {
			req, path = "GET "+p, p
		}
		na, answered := w.c.answers(w.ctx, req, id, path)
		if answered || w.heard.Load() != seen {
			continue
		}
		na.Silent = true
		w.err = na
		w.cancel()
		return
	}
}

// stop ends the watch (a second call returns the same); the error is the *NoAnswerError
// that ended the stream, if one did.
func (w *silenceWatch) stop() error {
	w.cancel()
	<-w.done
	if w.err == nil {
		return nil
	}
	return w.err
}

// heardReader tells w of every read of the answer that brought bytes.
type heardReader struct {
	r io.Reader
	w *silenceWatch
}

func (h heardReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if n > 0 {
		h.w.heardFrom("")
	}
	return n, err
}

// answers reports whether foreman answers GET path (req, of job jobID) within
// WithAnswerTimeout, as within tells: any answer of foreman's, whatever its status, and
// any failure that is not the bound running out on a request foreman had whole (a
// refused connection, or one not made in time, never reached foreman: not a hang, and
// the stream, still open, will tell it), count; so does ctx ending. An answer in
// foreman's place (a proxy's 502, 503 or 504 page) does not: the check is asked again
// until the bound runs out. When foreman did not answer, na says so.
func (c *Client) answers(ctx context.Context, req, jobID, path string) (na *NoAnswerError, answered bool) {
	err := c.within(ctx, req, jobID, func(ctx context.Context) error {
		resp, err := c.request(ctx, http.MethodGet, path, nil, nil)
		if err == nil {
			resp.Body.Close()
		}
		return err
	})
	if errors.As(err, &na) {
		return na, false
	}
	return nil, true
}

// tookTrace sets took once the request went out whole: foreman has it.
func tookTrace(ctx context.Context, took *atomic.Bool) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(i httptrace.WroteRequestInfo) {
			if i.Err == nil {
				took.Store(true)
			}
		},
	})
}
