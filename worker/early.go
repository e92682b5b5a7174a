package worker

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// earlyCall is a target call begun when an idle worker sees a job's queue message
// published, before the message is stored and its lease held (Config.EarlyCall,
// ADR-0034): the call and the job's durable writes (record, queue message, start) take
// one stretch of time instead of following each other. Its frames wait in the call until
// the job's run adopts it, which it does only once it holds the message's lease and the
// job passed every check a delivered job passes; the frames then wait as any call's do
// (for the stored start, but for a sync job's, ADR-0036). A job that is not to run (its
// message never stored, canceled meanwhile, another message delivered first) drops it:
// the call is aborted before anything of it was published.
type earlyCall struct {
	jobID string
	token string // the job's queue
	kind  broker.Kind
	body  []byte
	call  targetCall // how the target is called for it

	ctx   context.Context
	abort context.CancelCauseFunc
	r     *broker.StreamWriter

	frame    func([]byte) error // the run's frame callback, set before adopted is closed
	mu       sync.Mutex         // guards seen and sawEarly
	seen     func(time.Time)    // the run's record of an assembled answer's lines
	sawEarly bool               // a line came before the call was adopted
	adopted  chan struct{}
	adopting bool // only the worker's loop reads and writes it
	done     chan struct{}
	ct       string
	err      error
}

// errDropped aborts an early call no run adopted.
var errDropped = errors.New("early call dropped: the job did not run from it")

// callEarly begins the call of the job published in u, if the worker may: EarlyCall is
// set, the wake-up is fresh (it came while the loop was idle: one left over from while a
// job ran may name a job canceled or run since), the message carries its body, the
// target is not stalled, and the job's runner is loaded by what the worker knows now
// (an early call must never be the one that swaps a model in: that costs seconds, and a
// dropped call would have cost them for nothing; nor does it wait for /api/ps, which the
// read-ahead reads beside the fetch). It returns nil otherwise.
//
// The choice of the next job is the one the loop makes without it: a fresh wake-up that
// replaced none fetches the woken job's queue (the loop was idle, so nothing else was
// ready); one that replaced another job's, or is left over from while the loop was busy
// with others waiting, goes through the pick instead, without an early call. Should the
// woken queue deliver another message first (one published just before to that queue),
// the call is dropped before that job runs.
func (w *Worker) callEarly(ctx context.Context, u wakeup) *earlyCall {
	if !w.cfg.EarlyCall || !u.fresh || u.body == nil || !w.store.Knows(u.kind) || broker.ValidateID(u.jobID) != nil {
		return nil
	}
	if w.TargetStall() != nil || !w.loadedNow(u.token) {
		return nil
	}
	jctx, abort := context.WithCancelCause(ctx)
	ec := &earlyCall{
		jobID: u.jobID, token: u.token, kind: u.kind, body: u.body, call: newTargetCall(u.kind, u.body),
		ctx: jctx, abort: abort, r: w.store.StreamWriter(u.jobID),
		adopted: make(chan struct{}), done: make(chan struct{}),
	}
	w.trace(u.jobID, StageCalled)
	go func() {
		defer close(ec.done)
		ec.ct, ec.err = w.callTarget(jctx, ec.call, ec.r.SetContentType, func(f []byte) error {
			select {
			case <-ec.adopted:
				return ec.frame(f)
			case <-jctx.Done():
				return context.Cause(jctx)
			}
		}, ec.sawLine, ec.r.Limit(), w.log.With("job_id", u.jobID, "model", modelOf(u.token)))
	}()
	return ec
}

// sawLine hears of a line of an assembled answer (callTarget): the run that adopted the
// call records it; before that, the adoption records that lines came, at its own time.
func (ec *earlyCall) sawLine(now time.Time) {
	ec.mu.Lock()
	defer ec.mu.Unlock()
	if ec.seen != nil {
		ec.seen(now)
		return
	}
	ec.sawEarly = true
}

// forJob reports whether ec is the call of job id. A nil call is no job's.
func (ec *earlyCall) forJob(id string) bool { return ec != nil && ec.jobID == id }

// onQueue reports whether ec's job is in the queue of token. A nil call is in none.
func (ec *earlyCall) onQueue(token string) bool { return ec != nil && ec.token == token }

// failed reports whether ec's call has ended, before a run adopted it, without an answer
// of the target's (its frames wait for the adoption, so an unadopted call that ended
// had no body): the target went away meanwhile (a connection error, a proxy's 502 or
// 504), or was silent; the run calls afresh rather than spend an attempt on it. One the
// target answered with an error status is its answer, which the run adopts as if it had
// called: called again, the target was asked twice and its first answer lost (a one-off
// 500 answered by a second call made while a slow fetch held the run back).
func (ec *earlyCall) failed() bool {
	select {
	case <-ec.done:
		var he *ollama.HTTPError
		return ec.err != nil && (!errors.As(ec.err, &he) || he.UpstreamDown())
	default:
		return false
	}
}

// loadedNow reports whether the runner of queue token is loaded by what the worker knows
// without asking the target (loadedLocked).
func (w *Worker) loadedNow(token string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Contains(w.loadedLocked(), runnerOf(token))
}

// matches reports whether lease d is the message ec was begun for: the same job, kind
// and body. A nil call matches nothing.
func (ec *earlyCall) matches(d *broker.Lease) bool {
	return ec != nil && d.JobID == ec.jobID && d.Kind == ec.kind && bytes.Equal(d.Body, ec.body)
}

// adopt makes ec the run's target call: frame gets its frames from now on, and seen
// hears of the lines of an assembled answer (those that came before, now). It returns
// the call's end as Target.Stream would.
func (ec *earlyCall) adopt(frame func([]byte) error, seen func(time.Time)) (string, error) {
	ec.adopting = true
	ec.frame = frame
	ec.mu.Lock()
	ec.seen = seen
	if ec.sawEarly {
		seen(time.Now())
	}
	ec.mu.Unlock()
	close(ec.adopted)
	<-ec.done
	return ec.ct, ec.err
}

// drop aborts a call no run adopted and waits for it to end, so that the next call
// does not overlap it; it tells w the target may have changed meanwhile. A nil or
// adopted call is left alone.
func (w *Worker) drop(ec *earlyCall) {
	if ec == nil || ec.adopting {
		return
	}
	ec.adopting = true // once
	ec.abort(errDropped)
	<-ec.done
	w.mu.Lock()
	w.lastEnd = time.Now() // the call reached the target: read /api/ps before trusting it
	w.mu.Unlock()
}
