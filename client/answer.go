package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"time"
)

// within makes fn, one request of a wait, bounded by WithAnswerTimeout: should foreman
// take it and not answer in time (the caller's ctx still live), the error is a
// *NoAnswerError for req (of job jobID, if known).
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
	err := fn(rctx)
	if err != nil && ctx.Err() == nil && rctx.Err() != nil {
		if !took.Load() {
			return &ConnectionError{URL: c.shown, Err: fmt.Errorf("%s: not sent within %s", req, c.answerTimeout)}
		}
		return c.noAnswer(req, jobID, false)
	}
	return err
}

func (c *Client) noAnswer(req, jobID string, silent bool) *NoAnswerError {
	return &NoAnswerError{URL: c.shown, Request: req, Within: c.answerTimeout, JobID: jobID, Silent: silent}
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
		if w.c.answers(w.ctx, path) || w.heard.Load() != seen {
			continue
		}
		w.err = w.c.noAnswer(req, id, true)
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

// answers reports whether foreman answers GET path within WithAnswerTimeout: any answer,
// whatever its status, and any failure that is not the bound running out on a request
// foreman had whole (a refused connection, or one not made in time, never reached
// foreman: not a hang, and the stream, still open, will tell it), count; so does ctx
// ending.
func (c *Client) answers(ctx context.Context, path string) bool {
	rctx, cancel := context.WithTimeout(ctx, c.answerTimeout)
	defer cancel()
	var took atomic.Bool
	rctx = tookTrace(rctx, &took)
	resp, err := c.request(rctx, http.MethodGet, path, nil, nil)
	if err == nil {
		resp.Body.Close()
		return true
	}
	return rctx.Err() == nil || ctx.Err() != nil || !took.Load()
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
