package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"strings"
	"sync"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// handle runs one delivered job to its end, or hands it back. ahead, when not nil, is a
// read of the record begun before the lease was held (see readAhead); early, when not
// nil, a target call begun before it (callEarly): the run adopts it if it is this job's,
// any other way out drops it.
func (w *Worker) handle(ctx context.Context, d *broker.Lease, ahead *recordRead, early *earlyCall) {
	if !early.matches(d) || early.failed() {
		// Another message came first: its job must not overlap the call. Or the call
		// failed before its run without the target's answer (a call held while the
		// fetches went on, whose target went away meanwhile): the run calls afresh rather
		// than spend an attempt on it.
		w.drop(early)
		early = nil
	}
	defer w.drop(early) // unless run adopted it
	w.setLeased(d.JobID)
	defer w.setLeased("")
	log := w.log.With("job_id", d.JobID, "model", d.Model)
	// The delivery is kept in progress from its fetch (ADR-0091): the reads before the
	// run (its record, waited for while it trails the message or retried through a leader
	// election, a caller's presence, what the target has loaded) answered slowly may take
	// longer than a short ack wait, and JetStream would hand the job to another foreman
	// while this one starts it. The run holds the same keeper, and lets go after it.
	release := w.keepInProgress(d, log)
	defer release()
	bctx, cancel := w.storeCtx(ctx)
	defer cancel()
	j, rev, ok := w.admit(ctx, bctx, d, ahead, log)
	if !ok {
		return
	}
	w.run(ctx, d, j, rev, early, log)
}

// admit reads the record of delivered job d (ahead, when not nil, is a read begun before
// the lease was held) and settles the delivery when the job is not to run: handed back
// (a stop, a failed read), dropped (an orphan, an ended job, a spare copy), removed (not
// the job's message), or ended (a cancel requested, a caller gone, its attempts used
// up). A delivery again of the job whose end is being stored is left to that end. It
// returns the record, read at rev, of a job to run; false when it settled d or left it.
func (w *Worker) admit(ctx, bctx context.Context, d *broker.Lease, ahead *recordRead, log *slog.Logger) (*broker.Job, uint64, bool) {
	if w.isStopping(ctx) {
		// Fetched just as Stop came: give it back untouched.
		w.giveBack(bctx, d, log)
		return nil, 0, false
	}
	// Whether the job's end was being stored before its record is read: an end stored,
	// and its mark gone, between the read and the check below would leave a record read
	// as running for a job that ended.
	finishing := w.isFinishing(d.JobID)
	j, rev, ok := ahead.take(d.JobID)
	var err error
	if !ok {
		// A message delivered a moment before its record (Submit writes both at once)
		// waits for the record; only an orphan comes back ErrNotFound. Stop ends the wait.
		// A store that does not answer holds the delivery until it does (holdRead).
		read := func(ctx context.Context) (err error) {
			j, rev, err = w.jobOf(ctx, d)
			return err
		}
		rctx, rcancel := w.untilStop(ctx)
		err = w.holdRead(ctx, d, read(rctx), "read job record", log, read)
		rcancel()
	}
	if err == nil {
		w.trace(d.JobID, StageRecord)
	}
	switch {
	case err != nil && w.isStopping(ctx):
		w.giveBack(bctx, d, log)
	case errors.Is(err, broker.ErrNotFound):
		log.Warn("queue message without a job record (expired, or its submit failed); dropped")
		w.finish(bctx, d, log)
	case err != nil:
		// The store answered, with an error (a record that does not decode): a wait would
		// not mend it. Each delivery tries once more, and JetStream's last one fails it.
		log.Warn("read job record; will retry", "err", err)
		w.nak(d, w.cfg.RetryDelay, log)
	case j.Kind != d.Kind || !sameModel(j.Model, d.Token):
		// Not the message foreman queued for this job: running it would run the job with
		// another body, and ending it would end a job that is still queued.
		w.discard(d, fmt.Errorf("%w: job %s is a %s job of %s", broker.ErrUnusable, j.ID, j.Kind, j.Model))
	case j.State.Terminal():
		// Canceled while queued, or a crash came between the terminal write and the ack.
		log.Info("job already ended; dropping its queue message", "state", j.State)
		w.finish(bctx, d, log)
	case !d.Requeued && j.IsSpare(d.Seq):
		// A job runs only from a message delivered to it, so another message of a running
		// job is a spare copy (an idempotent retry published the job again after the
		// queue's duplicate window): the delivery running the job ends it, and a crash of
		// that run brings that message back (at once on an exclusive store, whose reset
		// consumers count its deliveries from 1 again), not this one.
		log.Info("spare queue message of a running job; dropped", "state", j.State)
		w.settling(d)
		done := w.index.removing(d.Token, d.Seq)
		err := w.store.DropSpare(bctx, d)
		done(err == nil)
		if err != nil {
			log.Warn("ack spare queue message", "err", err)
		}
	case finishing || w.isFinishing(d.JobID):
		// Its own message again while its end is stored in the background: its ack wait ran
		// out (foreman frozen for longer than it, a suspended VM: at the thaw the server's
		// timer beats the keep-alive's tick). The end acks the message, or hands it back, by
		// its stream sequence, which settles this delivery too; the record does not say
		// the job ended yet, and running it again would run it twice.
		log.Info("queue message of a job whose end is being stored came again (its ack wait ran out: was foreman frozen?); left to that end")
	case j.CancelRequested != "":
		// Canceled while it ran on a foreman that died before it could end it.
		w.cancelRun(bctx, d, w.store.StreamWriter(d.JobID), log)
	case w.store.CallerGoneAt(ctx, j, d.GatewaySent()):
		w.abandon(bctx, d, log)
	case j.Attempt >= w.cfg.maxAttempts:
		w.fail(bctx, d, j.Sync, w.store.StreamWriter(d.JobID), exhausted(j.Error, "interrupted"), 0, log)
	default:
		return j, rev, true
	}
	return nil, 0, false
}

// run starts the next attempt of job j, read at revision rev, and concludes it. The start
// write (the attempt and its loading or working state) and the target call go out
// together (ADR-0032): no frame is published before the start write is stored (but for a
// sync job's, which wait only for the job to be stored, ADR-0036), and a start write that
// fails aborts the call, which then ends as a failed start write always did. early, when
// not nil, is the job's call begun already: the run adopts it instead of calling the
// target.
func (w *Worker) run(ctx context.Context, d *broker.Lease, j *broker.Job, rev uint64, early *earlyCall, log *slog.Logger) {
	var jctx context.Context
	var abort context.CancelCauseFunc
	if early != nil {
		jctx, abort = early.ctx, early.abort // its context already derives from ctx
	} else {
		jctx, abort = context.WithCancelCause(ctx)
	}
	defer abort(nil)
	// Watch the record before the start write: a cancel request after that write is then
	// never missed, and the start write refuses a job with one already pending.
	stopWatch, err := w.store.OnJobChange(d.JobID, func(rec *broker.Job) {
		if rec.CancelRequested != "" || rec.State == broker.StateCanceled {
			abort(errCanceled)
		}
	})
	if err != nil {
		log.Warn("watch job record; will retry", "err", err)
		w.nak(d, w.cfg.RetryDelay, log)
		return
	}
	defer stopWatch()
	// The delivery is kept in progress (handle's keeper, since its fetch) until it is
	// settled, through the start write's wait and the end's writes, or handed to the end
	// stored in the background (endLater), whatever ended the call (a cancel, a timeout).
	// The pick counts once the job runs: a delivery dropped unrun (an ended job's message,
	// an orphan, a spare copy, a gone caller, a watch that failed) leaves its class's
	// once-per-MaxWait pick and its program's turn to the next job of theirs.
	w.took(d.Token)

	var call targetCall
	if early != nil {
		call = early.call // the same body: a match
	} else {
		call = newTargetCall(j.Kind, d.Body)
	}
	state := broker.StateLoading // the target must swap the model in
	if call.unloadOnly || w.isLoaded(ctx, d.Token) {
		// Ollama's unload request loads nothing, whatever is loaded.
		state = broker.StateWorking
	}
	start := w.startAttempt(ctx, d, j, rev, state, abort, log)
	if w.cfg.StartBeforeCall {
		if _, err := start.wait(); err != nil {
			w.startFailed(ctx, d, j, nil, err, log)
			return
		}
	}
	w.begin(d.Token, state == broker.StateLoading, abort)
	defer w.end()
	run := w.startRunning(d.JobID, d.Model, d.Token, state)

	if limit := w.cfg.MaxJobTime; limit > 0 {
		t := time.AfterFunc(limit, func() { abort(&jobTimeError{limit: limit}) })
		defer t.Stop()
	}
	run.whole = !call.streams
	if limit := w.cfg.NonStreamTimeout; !call.streams && limit > 0 {
		t := time.AfterFunc(limit, func() { abort(&jobTimeError{limit: limit, nonStream: true}) })
		defer t.Stop()
	}
	var r *broker.StreamWriter
	if early != nil {
		r = early.r // the writer the call's content type went to
	} else {
		r = w.store.StreamWriter(d.JobID)
	}
	if j.Sync && j.FeedPing && !w.store.CallerHere(j) {
		// A caller on another foreman: its subscription may not have reached this
		// foreman's NATS server yet (ADR-0072). Nothing is done for one of this process,
		// whose feed is handed the answer here (ADR-0035), or is closed: the caller left
		// as the job was being taken, and no reader will come to wait for, or to send
		// lost frames again to (ADR-0078).
		r.AwaitReader(j.Gateway)
	}
	defer r.Close()
	working := state == broker.StateWorking
	frame := func(f []byte) error {
		// Nothing reaches a client before the job is on disk: its record and queue message
		// (the lease and the record read say so) and, but for a sync job's answer, the
		// attempt's start (ADR-0032). A sync job's caller gets its frames while the start
		// is stored (ADR-0036): should it fail, the call stops at the next frame. The first
		// frame of a job that was loading waits all the same: it marks the job working,
		// which must follow the start. The watchdog does not count this wait.
		if !j.Sync || !working {
			if _, err := start.wait(); err != nil {
				return errNotStarted
			}
		} else if start.failed() {
			return errNotStarted
		}
		if len(r.Frames()) == 0 {
			w.trace(d.JobID, StageFirstFrame) // before: a reader of this process may have it at once (ADR-0035)
		}
		run.gotFrame(time.Now())
		if fault := w.cfg.frameFault; fault != nil {
			if err := fault(d.JobID, len(r.Frames())); err != nil {
				return &publishError{err}
			}
		}
		// The frame goes out first: the state write costs an fsync the client need not wait for.
		if err := r.Frame(f); err != nil {
			if errors.Is(err, broker.ErrAnswerTooLarge) {
				return err // the job fails: another attempt would answer the same
			}
			return &publishError{err}
		}
		if !working {
			working = true
			w.markWorking(jctx, d.JobID, log)
		}
		return nil
	}
	// The lines of an assembled answer (ADR-0050) come before its one frame: the first
	// marks the job working, as a first frame does.
	seen := func(now time.Time) {
		run.gotFrame(now)
		if working {
			return
		}
		if _, err := start.wait(); err != nil {
			return // the answer's frame, or the call's end, meets the failure
		}
		working = true
		w.markWorking(jctx, d.JobID, log)
	}
	// Nothing of a 2xx answer goes out before a frame of it is one Ollama sends: a target
	// answering something else fails the job before any caller got a byte of it.
	check := &answerCheck{contentType: r.ContentType, pass: frame}
	var ct string
	if early != nil {
		ct, err = early.adopt(check.frame, seen)
	} else {
		w.trace(d.JobID, StageCalled)
		ct, err = w.callTarget(jctx, call, r.SetContentType, check.frame, seen, r.Limit(), log)
	}
	run.called.Store(true)
	if err == nil {
		err = noImage(d.Kind, j.Model, check.end())
	}
	if err == nil {
		err = call.cut(ct, r.Frames())
	}
	// An answer with keep_alive 0 leaves its model unloaded: Ollama expires the runner as
	// the call ends.
	w.called(d.Token, !run.answeredAt().IsZero() && streamError(ct, r.Frames()) == "", call.unloads, ollama.Unreachable(err))
	if err == nil && j.Sync && !start.failed() && context.Cause(jctx) == nil && w.answerBeforeStart(d, j, r, ct, start, run, log) {
		return
	}
	started, serr := start.wait()
	if serr != nil {
		w.startFailed(ctx, d, j, r, serr, log)
		return
	}
	log = log.With("attempt", started.Attempt)
	if err == nil && streamError(ct, r.Frames()) == "" {
		// An answer that ends in an error (a runner that died at once) is no run of the
		// model's: it would teach the ETAs that its jobs take no time.
		w.learn(run, time.Now())
	}
	w.conclude(ctx, d, started, r, ct, err, context.Cause(jctx), log)
}

// answerBeforeStart ends a sync job whose call succeeded without waiting for its start
// write, which may still be on its way (ADR-0038): the final marker answers the caller at
// once, and the start, then the result and the terminal state, are stored afterwards. It
// reports false, having done nothing, when the answer is an error in the stream: that is
// decided once the start is stored, as before.
func (w *Worker) answerBeforeStart(d *broker.Lease, j *broker.Job, r *broker.StreamWriter, ct string, start *startWrite, run *runningJob, log *slog.Logger) bool {
	if streamError(ct, r.Frames()) != "" {
		return false
	}
	w.targetAnswered()
	w.countBusy(false) // an answer: the next "not now" waits from RetryDelay again (ADR-0086)
	w.learn(run, time.Now())
	w.endDone(d, j, r, ct, log, func(ctx context.Context, release func()) (*slog.Logger, bool) {
		started, err := start.wait()
		if err != nil && !errors.Is(err, errEnded) && !errors.Is(err, errCancelRequested) {
			// A store failure: the job cannot go from queued to done without its start,
			// so the start is stored again, a cancel request no longer stopping it.
			log.Warn("store the attempt's start after its answer; trying again", "err", err)
			started, err = w.storeLateStart(ctx, d, j.Attempt)
		}
		switch {
		case err == nil:
			return log.With("attempt", started.Attempt), true
		case errors.Is(err, errCancelRequested):
			// Requested on a record that was running already (a delivery after a crash):
			// moot once the answer is out, as in storeDone, which ends it done.
			return log, true
		case errors.Is(err, errEnded):
			// Another writer ended it before its start was stored (a cancel while it was
			// still queued): the record stays as that writer left it.
			log.Info("job ended elsewhere while its answer went out", "err", err)
		default:
			// The record cannot be written. Its caller has the answer: the message goes
			// rather than run the job again, and the record stays as it was.
			log.Error("store the attempt's start after its answer; its queue message is removed", "err", err)
		}
		release()
		w.finish(ctx, d, log)
		return log, false
	})
	return true
}

// storeLateStart stores the start of a sync job's attempt whose answer went out while
// its own start write failed (ADR-0038): working, the attempt counted, the message that
// ran it named, unless the record's attempt is no longer read, the one the run started
// from (the failed write was stored after all, its answer lost). Only a job that ended
// stops it; it tries as long as a terminal write does.
func (w *Worker) storeLateStart(ctx context.Context, d *broker.Lease, read int) (*broker.Job, error) {
	return w.retryWrite(ctx, d.JobID, false, func(j *broker.Job) {
		if j.Attempt == read {
			j.State, j.Error, j.QueueSeq = broker.StateWorking, "", d.Seq
			j.Attempt++
			w.nameRunner(j)
		}
	})
}

// publishError is a failure to publish a frame (NATS, not the target).
type publishError struct{ err error }

func (e *publishError) Error() string { return "relay frame: " + e.err.Error() }
func (e *publishError) Unwrap() error { return e.err }

// jobTimeError aborts an attempt that ran longer than Config.MaxJobTime, or a call that
// does not stream longer than Config.NonStreamTimeout (nonStream). Either fails the job
// without a retry: a long generation would only run as long again.
type jobTimeError struct {
	limit     time.Duration
	nonStream bool
}

func (e *jobTimeError) Error() string {
	if e.nonStream {
		return "target too slow: the non-streamed answer took longer than the non-stream timeout of " + e.limit.String()
	}
	return "target too slow: the attempt ran longer than the max job time of " + e.limit.String()
}

// conclude ends an attempt according to how the target call ended.
func (w *Worker) conclude(ctx context.Context, d *broker.Lease, j *broker.Job, r *broker.StreamWriter, ct string, err, cause error, log *slog.Logger) {
	bctx, cancel := w.storeCtx(ctx)
	defer cancel()
	var httpErr *ollama.HTTPError
	var connErr *ollama.ConnectionError
	var stall *ollama.StallError
	var timeout *jobTimeError
	var silent *silentTargetError
	var pubErr *publishError
	w.countBusy(cause == nil && targetBusy(err))
	switch {
	case err == nil && runnerFailed(streamError(ct, r.Frames())):
		w.targetAnswered()
		w.attemptFailed(ctx, bctx, d, j, r, errors.New(streamError(ct, r.Frames())), log)
	case err == nil:
		w.targetAnswered()
		w.succeed(bctx, d, j, r, ct, log)
	case errors.Is(cause, errCanceled):
		// cancelRun's "job canceled" is the line at info: one line a cancel.
		log.Debug("cancel requested while running; upstream request aborted")
		w.cancelRun(bctx, d, r, log)
	case errors.As(cause, &timeout):
		w.fail(bctx, d, j.Sync, r, timeout.Error(), 0, log)
	case errors.As(cause, &silent):
		w.targetStalled(d.JobID, silent)
		w.attemptFailed(ctx, bctx, d, j, r, silent, log)
	case cause != nil:
		w.handBack(bctx, d, j, r, log)
	case errors.As(err, &httpErr) && httpErr.UpstreamDown():
		// A proxy in front of the target could not reach it: not Ollama's answer.
		w.attemptFailed(ctx, bctx, d, j, r, httpErr, log)
	case errors.As(err, &httpErr) && (busy(httpErr.StatusCode) || runnerFailed(errorWords(httpErr.Message))):
		w.targetAnswered()
		w.attemptFailed(ctx, bctx, d, j, r, httpErr, log)
	case errors.As(err, &httpErr) && httpErr.StatusCode == http.StatusNotFound && w.modelLeft(ctx, d.Token):
		w.targetAnswered()
		w.retry(ctx, bctx, d, j, r, &modelGoneError{model: j.Model, answer: httpErr.Message}, log)
	case errors.As(err, &httpErr):
		w.targetAnswered()
		w.fail(bctx, d, j.Sync, r, httpErr.Message, httpErr.StatusCode, log)
	case errors.As(err, &stall):
		w.targetStalled(d.JobID, stall)
		w.attemptFailed(ctx, bctx, d, j, r, stall, log)
	case errors.As(err, &connErr):
		w.attemptFailed(ctx, bctx, d, j, r, connErr, log)
	case errors.As(err, &pubErr):
		// Not the target's failure, but as for one cut off: a sync job's caller with part
		// of the answer cannot have another attempt spliced in.
		w.attemptFailed(ctx, bctx, d, j, r, err, log)
	default:
		w.fail(bctx, d, j.Sync, r, err.Error(), 0, log)
	}
}

// storeRetrying writes a failed attempt's retrying state with set. One that gives the
// attempt back (uncounted: the target's "not now", a call that never reached it) is tried
// again while the store refuses for now, for up to terminalWait, its delivery kept in
// progress meanwhile (ADR-0091): without it the job would run on with one attempt
// fewer, and a busy spell meeting a store's hiccup could fail it "attempts exhausted".
// Any other retrying write is tried once: the next attempt's start write sets the state.
func (w *Worker) storeRetrying(ctx context.Context, id string, uncounted bool, set func(*broker.Job)) error {
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.terminalWait())
	defer cancel()
	write := func() error {
		if fault := w.cfg.retryingFault; fault != nil {
			if err := fault(id); err != nil {
				return err
			}
		}
		_, err := w.transition(tctx, id, fromLive, set)
		return err
	}
	err := write()
	for pause := terminalPause; uncounted && w.refusing(err) && !w.isStopping(tctx); pause = min(2*pause, 2*time.Second) {
		w.log.Warn("store retrying state, which gives the attempt back; trying again", "job_id", id, "retry_in", pause, "err", err)
		if !sleepCtx(tctx, pause) {
			break
		}
		err = write()
	}
	return err
}

// busy reports whether an HTTP status from the target says "not now" rather than "no":
// Ollama answers 503 when its own queue is full (other clients than foreman use it too)
// and a proxy in front of it may answer 429. The attempt is retried after the back-off,
// as one the target did not complete; any other status ends the job, as the target would
// answer the same again.
func busy(status int) bool {
	return status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests
}

// targetBusy reports whether err is the target's "not now" (busy).
func targetBusy(err error) bool {
	var httpErr *ollama.HTTPError
	return errors.As(err, &httpErr) && busy(httpErr.StatusCode)
}

// countBusy keeps the count of the target's "not now" answers in a row (busy: the
// attempt just ended with one), which sets the worker's wait after each (busyWait).
func (w *Worker) countBusy(busy bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if busy {
		w.busyInRow++
	} else {
		w.busyInRow = 0
	}
}

// busyWait is how long the worker waits after the target's "not now": RetryDelay,
// doubled at each such answer in a row, at most maxBusyWait.
func (w *Worker) busyWait() time.Duration {
	w.mu.Lock()
	n := w.busyInRow
	w.mu.Unlock()
	return min(w.cfg.retryDelay(max(n, 1)), maxBusyWait)
}

// waitIfBusy pauses the worker for busyWait after the target answered "not now"
// (ADR-0086): the jobs behind the one it answered would get the same answer, and each
// spend an attempt on it. Nothing else ends the wait but a stop.
func (w *Worker) waitIfBusy(ctx context.Context, cause error) {
	if !targetBusy(cause) {
		return
	}
	w.pause(broker.PauseTargetBusy, cause)
	defer w.resume()
	w.sleepOrWake(ctx, w.busyWait(), nil)
}

// runnerFailed reports whether msg, an error of Ollama's (a status's or a stream's last
// line), says that the runner of the model died rather than answered the request: the
// system killed it (on a Mac, for memory), it crashed, or it stopped while loading.
// Ollama starts a new runner at the next request, so the attempt is retried as one the
// target did not complete (ADR-0085), where an answer to the request itself ends the job.
// A stream of /v1 that stopped before its end (errStreamCut) is one too: Ollama's writers
// there drop that error.
func runnerFailed(msg string) bool {
	for _, p := range runnerFailures {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// errorWords returns the text of an error body in the shape Ollama's /v1 middlewares
// rewrite its handlers' errors into (v0.17.4 openai.NewError, anthropic.NewError: the
// text in error.message), msg itself for any other. An HTTPError's Message keeps such a
// body whole, for the gateway to relay to an OpenAI or Anthropic client as Ollama wrote
// it; Ollama's words for a dead runner are in its error.message.
func errorWords(msg string) string {
	if !strings.HasPrefix(msg, "{") {
		return msg
	}
	var e struct {
		Error struct {
			Message *string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal([]byte(msg), &e) != nil || e.Error.Message == nil {
		return msg
	}
	return *e.Error.Message
}

// runnerFailures begin the errors Ollama (0.17) reports a dead runner with (llm/server.go).
var runnerFailures = []string{
	"an error was encountered while running the model", // its answer broke off (unexpected EOF)
	"model runner has unexpectedly stopped",            // it took no request
	"llama runner process has terminated",              // it died while loading
	"llama runner process no longer running",           // it was found dead while loading
	errStreamCut,
}

// attemptFailed ends an attempt the target did not complete (unreachable, cut off,
// stalled) or whose frames could not be published: the job is retried, unless it is a
// sync job whose caller already has part of the response, where a second attempt cannot
// be spliced in. Either way a target gone pauses the worker (see retry).
func (w *Worker) attemptFailed(ctx, bctx context.Context, d *broker.Lease, j *broker.Job, r *broker.StreamWriter, err error, log *slog.Logger) {
	if r.Published() && j.Sync {
		// Ollama's answer (a runner's death told in a status) keeps its words and status.
		msg, status := err.Error(), 0
		var httpErr *ollama.HTTPError
		if errors.As(err, &httpErr) {
			msg, status = httpErr.Message, httpErr.StatusCode
		}
		w.fail(bctx, d, true, r, msg, status, log)
		w.waitIfGone(ctx, err)
		return
	}
	w.retry(ctx, bctx, d, j, r, err, log)
}

// succeed announces the end of the stream (a waiting client is answered at once), stores
// the result, then writes the terminal state.
func (w *Worker) succeed(ctx context.Context, d *broker.Lease, j *broker.Job, r *broker.StreamWriter, ct string, log *slog.Logger) {
	if msg := streamError(ct, r.Frames()); msg != "" {
		w.fail(ctx, d, j.Sync, r, msg, 0, log)
		return
	}
	w.endDone(d, j, r, ct, log, nil)
}

// endDone publishes a finished job's done marker (a waiting client is answered at once)
// and stores its result and terminal state in the background (endLater). settle, when
// not nil, runs there first; it gives the logger to go on with, or false when it ended
// the job itself (release, the keep-alive's stop, goes just before its ack).
func (w *Worker) endDone(d *broker.Lease, j *broker.Job, r *broker.StreamWriter, ct string, log *slog.Logger, settle func(ctx context.Context, release func()) (*slog.Logger, bool)) {
	w.trace(d.JobID, StageFinal) // before: a reader of this process may have it at once (ADR-0035)
	w.publishFinal(r, broker.StateDone, "", 0, log)
	frames := r.Frames()
	w.endLater(d, log, func(ctx context.Context, release func()) {
		if settle != nil {
			var ok bool
			if log, ok = settle(ctx, release); !ok {
				return
			}
		}
		if hook := w.cfg.beforeStoreDone; hook != nil {
			hook(d.JobID)
		}
		w.storeDone(ctx, d, release, j.Kind, j.Sync, ct, frames, log)
	})
}

// endLater runs end, the terminal writes and the ack (or NAK) of a job whose final marker
// went out, in the background, keeping the job's message in progress until then: the
// writes may take longer than the ack wait. release stops the keep-alive; end calls it
// just before the ack or NAK, so that no tick follows them.
func (w *Worker) endLater(d *broker.Lease, log *slog.Logger, end func(ctx context.Context, release func())) {
	w.setFinishing(d.JobID, true) // its message stays queued until it is acked
	// From now: the end may wait for an earlier job's (one at a time), for as long as
	// that one's terminal write goes on (storeAnswered).
	release := w.keepInProgress(d, log)
	w.afterwards(func(ctx context.Context) {
		defer w.setFinishing(d.JobID, false)
		defer release()
		end(ctx, release)
	})
}

// storeDone stores a finished job's result and terminal state (storeAnswered), then acks
// its message; release runs just before the ack or NAK. A cancel request that came after
// the call ended is moot: the stream already said done.
func (w *Worker) storeDone(ctx context.Context, d *broker.Lease, release func(), kind broker.Kind, sync bool, ct string, frames [][]byte, log *slog.Logger) {
	res, sawDone := result(kind, ct, frames)
	if !sawDone {
		log.Warn("target stream ended without done:true; job ends done with the frames it sent")
	}
	var inline json.RawMessage
	if len(res) <= resultInlineLimit && json.Valid(res) {
		inline = res
	}
	// A small result the record keeps byte for byte is the artifact itself: writing it to
	// the object store as well would cost two more fsyncs per job (ADR-0033).
	a, held := broker.Artifact{}, false
	if inline != nil {
		a, held = broker.HoldResult(inline)
	}
	var aerr error
	if !held {
		a, aerr = w.storeResult(ctx, d.JobID, sync, res, log)
	}
	if aerr != nil && !sync {
		// The result lives only here: an async job ending done without it would be done
		// with its answer lost. A store that still refuses as the worker stops, or a put
		// that timed out (holdResult), runs it again; a write no try gets past fails it,
		// saying why.
		if w.refusing(aerr) {
			release()
			log.Error("store result artifact; job will run again", "err", aerr, "result_bytes", len(res))
			w.nak(d, w.cfg.RetryDelay, log)
			return
		}
		msg := errorText("store the result: " + aerr.Error())
		err := w.storeAnswered(ctx, d.JobID, broker.StateFailed, false, log, func(j *broker.Job) {
			j.State, j.Error = broker.StateFailed, msg
		})
		release()
		if w.settleEnd(ctx, d, err, log) {
			log.Error("job failed: its result could not be stored", "err", aerr, "result_bytes", len(res))
		}
		return
	}
	if aerr != nil {
		// A sync job's caller has the answer: the job ends done, with the inline result
		// only (none when it was too large to keep inline).
		log.Error("store result artifact; the job ends done without it, its caller has it", "err", aerr, "result_bytes", len(res))
	}
	err := w.storeAnswered(ctx, d.JobID, broker.StateDone, true, log, func(j *broker.Job) {
		j.State, j.Error, j.Result = broker.StateDone, "", inline
		if aerr == nil {
			j.SetArtifact(a)
		}
	})
	release()
	if w.settleEnd(ctx, d, err, log) {
		log.Info("job done", "result_bytes", len(res))
	}
}

// storeResult writes a finished job's result to the object store (with the test fault).
// An async job's result lives only here: while the store refuses it (holdResult), the
// write goes on as its done state's does (storeAnswered), until stored or the worker
// stops.
func (w *Worker) storeResult(ctx context.Context, id string, sync bool, res []byte, log *slog.Logger) (broker.Artifact, error) {
	write := func() (broker.Artifact, error) {
		if fault := w.cfg.resultFault; fault != nil {
			if err := fault(id); err != nil {
				return broker.Artifact{}, err
			}
		}
		wctx, cancel := w.storeCtx(ctx) // each try its own time: the tries may outlast ctx
		defer cancel()
		return w.store.StoreArtifact(wctx, id, broker.ResultArtifact, "application/json", res)
	}
	a, err := write()
	for pause := terminalPause; !sync && w.holdResult(err); pause = min(2*pause, 2*time.Second) {
		log.Error("store result artifact; the answer is held here, so the job does not run again: trying on", "err", err, "result_bytes", len(res))
		if !w.sleep(context.Background(), pause) { // the worker stops
			break
		}
		a, err = write()
	}
	return a, err
}

// holdResult reports whether an async job's result write that failed with err is tried
// on rather than the job handed back (ADR-0058): only while the store refuses it. A put
// that ran out of time (a large result on a slow disk or cluster) is no refusal: the
// next try may be as slow, and each one that times out leaves the chunks it wrote
// (ADR-0019), tens of megabytes a round. Nor is a put refused for want of room
// (ErrStorageFull) while a record still fits: JetStream's storage limits refuse a write
// by its size, so a store near its limit takes the records of the jobs behind it and
// refuses only this large result; held, it held the worker (the next job's end waits
// behind it) for as long as the store lacked that room, hours maybe, with no pause shown
// and /healthz well. Such a put is tried on only while the job store refuses a probe
// write too (a full disk leaves failing publishes unanswered, ADR-0041; a store full for
// everything refuses the next job's start, which pauses the worker); otherwise the job
// is handed back, as before ADR-0058, bounded by its attempts.
func (w *Worker) holdResult(err error) bool {
	if !w.refusing(err) {
		return false
	}
	if !broker.TimedOut(err) && !errors.Is(err, broker.ErrStorageFull) {
		return true
	}
	ctx, cancel := w.untilStop(context.Background())
	defer cancel()
	ctx, cancelProbe := context.WithTimeout(ctx, 10*time.Second)
	defer cancelProbe()
	perr := w.store.ProbeWrite(ctx)
	return w.refusing(perr) && !broker.TimedOut(perr)
}

// storeAnswered writes the terminal state of a job whose final marker went out
// (writeTerminal, with the test fault for state). When the store refuses for longer
// than terminalWait, a write held (hold) goes on, its message kept in progress, until it
// is stored or the worker stops; one not held hands the job back (settleEnd) to run
// again, or its end would be lost. Held are a done job's end and a sync job's failed
// one. A sync job's caller has its answer, done or failed: running it again would
// answer nobody, and store another end than the one it got (ADR-0040). An async job's
// answer is here: running it again would throw it away and spend an attempt, on its
// last one ending the job failed, for a fault of foreman's store (ADR-0058). At a stop
// the message goes back: a sync job's next delivery, in a process without its caller,
// cancels it without running it; an async one runs again.
func (w *Worker) storeAnswered(ctx context.Context, id string, state broker.State, hold bool, log *slog.Logger, set func(*broker.Job)) error {
	write := func() error {
		if fault := w.cfg.endFault; fault != nil {
			if err := fault(id, state); err != nil {
				return err
			}
		}
		return w.writeTerminal(ctx, id, set)
	}
	err := write()
	// Only a store that refuses for now is waited for (refusing). Any other failure (a
	// record gone, one whose state may not become this one, a write that can never fit)
	// is handed back as before rather than hold the worker until it stops.
	for pause := terminalPause; hold && w.refusing(err); pause = min(2*pause, 2*time.Second) {
		log.Error("store the job's end; the job is answered, so it does not run again: trying on", "state", state, "err", err)
		if !w.sleep(context.Background(), pause) { // the worker stops
			break
		}
		err = write()
	}
	return err
}

// settleEnd acks a job whose terminal write err stored its end (or found it ended:
// errEnded), and reports true then; a job whose end was not stored goes back to the
// queue.
func (w *Worker) settleEnd(ctx context.Context, d *broker.Lease, err error, log *slog.Logger) bool {
	switch {
	case errors.Is(err, errEnded):
		log.Info("job already ended as it finished")
	case errors.Is(err, broker.ErrNotFound):
		// Its next delivery drops the message for want of a record.
		log.Warn("store the job's end: the job's record is gone; its message goes back", "err", err)
		w.nak(d, w.cfg.RetryDelay, log)
		return false
	case err != nil:
		// Without the terminal record an async job must run again rather than be lost. A
		// sync one given up on as the worker stops goes back as any job handed back then.
		delay, what := w.cfg.RetryDelay, "store the job's end; job will run again"
		if w.isStopping(context.Background()) {
			delay = max(delay, w.store.HandBackDelay(d))
			if d.Gateway != "" && d.Gateway == w.store.BootID() {
				// Its caller, answered or not, leaves with this process: the job's next
				// delivery cancels it unrun (CallerGone), it does not run again.
				what = "store the job's end; its message goes back as the worker stops, to be canceled unrun once this foreman is gone"
			}
		}
		log.Error(what, "err", err)
		w.nak(d, delay, log)
		return false
	}
	w.finish(ctx, d, log)
	return err == nil
}

// afterwards runs fn in the background with its own bounded context, after any earlier
// such work has finished (at most one at a time); Run waits for it before it returns.
func (w *Worker) afterwards(fn func(ctx context.Context)) {
	w.bgSlot <- struct{}{} // freed by the goroutine: the next afterwards waits for this one
	w.bg.Add(1)
	go func() {
		defer w.bg.Done()
		defer func() { <-w.bgSlot }()
		ctx, cancel := w.storeCtx(context.Background())
		defer cancel()
		fn(ctx)
	}()
}

// writeTerminal writes a job's terminal state, trying for up to terminalWait (within
// ctx): failing it would run a job again whose answer already went out, and a cluster
// electing a new stream leader after a node left refuses writes for several seconds. It
// returns errEnded when the job reached another terminal state first (or when a try
// that landed unseen wrote it).
func (w *Worker) writeTerminal(ctx context.Context, id string, set func(*broker.Job)) error {
	j, err := w.retryWrite(ctx, id, true, set)
	if err == nil && j != nil {
		// An earlier attempt cut off after its result's put left an object this end
		// does not name.
		w.store.DropStrayResult(context.WithoutCancel(ctx), j)
	}
	return err
}

// retryWrite applies set to job id's record unless the job ended (errEnded), trying for
// up to terminalWait (its own time: what came before may have used up ctx's); last says
// it is the attempt's last write (transitionLast). A record not found for goneWait in a
// row is gone, and the write gives up then.
func (w *Worker) retryWrite(ctx context.Context, id string, last bool, set func(*broker.Job)) (*broker.Job, error) {
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.terminalWait())
	defer cancel()
	var missingSince time.Time // since when the tries have found no record; zero until then
	pause := terminalPause
	for try := 1; ; try++ {
		j, err := w.transitionLast(tctx, id, last, fromUnended, set)
		if err == nil || errors.Is(err, errEnded) || tctx.Err() != nil {
			return j, err
		}
		if errors.Is(err, broker.ErrStoreFailed) && w.isStopping(tctx) {
			return j, err // no try outlasts it but a restart, and this stop is one
		}
		if errors.Is(err, broker.ErrConnClosed) {
			// Closed for good (a shutdown past its deadline closes it): no try reaches
			// the store any more.
			return j, err
		}
		switch {
		case !w.recordGone(err):
			missingSince = time.Time{}
		case missingSince.IsZero():
			missingSince = time.Now()
		case time.Since(missingSince) >= goneWait:
			return j, err
		}
		w.log.Warn("store job record; trying again", "job_id", id, "try", try, "retry_in", pause, "err", err)
		if !sleepCtx(tctx, pause) {
			return j, err
		}
		pause = min(2*pause, 2*time.Second)
	}
}

// refusing reports the error of a store that refuses writes for now, and may take them
// again: unavailable (broker.Transient) or out of room (a disk that filled up).
func (w *Worker) refusing(err error) bool {
	return broker.Transient(err) || errors.Is(err, broker.ErrStorageFull) || errors.Is(err, broker.ErrStoreFailed)
}

// recordGone reports a write that found no record: it was purged (or expired). On a
// cluster too: a replica behind by a write that says "not found" is asked past (the
// stream's leader answers, broker/leaderget.go), so "not found" is the leader's word.
func (w *Worker) recordGone(err error) bool {
	return errors.Is(err, broker.ErrNotFound)
}

// sleepCtx waits d, or less when ctx ends first (then false). Unlike Worker.sleep it
// does not end at Stop: a terminal write must go on while the worker stops.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// cancelRun ends a job whose cancellation was requested (Store.Cancel sets the record's
// CancelRequested and leaves a running job's terminal state to the worker): the final
// canceled marker first, then the canceled record with the request's reason.
func (w *Worker) cancelRun(ctx context.Context, d *broker.Lease, r *broker.StreamWriter, log *slog.Logger) {
	// The marker carries the reason, so a waiting client learns why.
	var why string
	if rec, _, err := w.store.Get(ctx, d.JobID); err == nil {
		why = rec.CancelRequested
	}
	w.publishFinal(r, broker.StateCanceled, why, 0, log)
	reason := ""
	err := w.writeTerminal(ctx, d.JobID, func(j *broker.Job) {
		j.State, j.Error = broker.StateCanceled, j.CancelRequested
		reason = j.CancelRequested
	})
	if err != nil && !errors.Is(err, errEnded) {
		// Its next delivery meets the request again and ends it then.
		log.Error("store canceled state; job will be canceled when it comes back", "err", err)
		w.nak(d, w.cfg.RetryDelay, log)
		return
	}
	log.Info("job canceled", "reason", reason)
	w.finish(ctx, d, log)
}

// publishEnded publishes the final marker of job id, which another writer ended while
// its attempt ran (a cancel, the expiry, the delivery-limit advisory): the state and
// error its record holds, so a waiting caller hears what GET /jobs/{id} says. A record
// that cannot be read is taken for a cancel's, the common case.
func (w *Worker) publishEnded(ctx context.Context, id string, r *broker.StreamWriter, log *slog.Logger) {
	state, msg := broker.StateCanceled, ""
	if rec, _, err := w.store.Get(ctx, id); err == nil && rec.State.Terminal() {
		state, msg = rec.State, rec.Error
	}
	w.publishFinal(r, state, msg, 0, log)
}

// abandon ends a sync job whose caller is gone (its foreman died) canceled, without
// running it: nobody would read the answer, and callers that retry wait behind it.
func (w *Worker) abandon(ctx context.Context, d *broker.Lease, log *slog.Logger) {
	w.publishFinal(w.store.StreamWriter(d.JobID), broker.StateCanceled, broker.CallerGoneReason, 0, log)
	err := w.writeTerminal(ctx, d.JobID, func(j *broker.Job) {
		j.State, j.Error = broker.StateCanceled, broker.CallerGoneReason
	})
	if err != nil && !errors.Is(err, errEnded) {
		log.Error("store canceled state of an abandoned sync job; will retry", "err", err)
		w.nak(d, w.cfg.RetryDelay, log)
		return
	}
	log.Info("sync job canceled without running: " + broker.CallerGoneReason)
	w.finish(ctx, d, log)
}

// fail ends the job as failed; status is the target's HTTP status, 0 if none. The final
// marker tells a waiting caller at once; a sync job's failed state is then stored in the
// background, as a done one's result is, and tried on rather than run the job again
// (storeAnswered).
func (w *Worker) fail(ctx context.Context, d *broker.Lease, sync bool, r *broker.StreamWriter, msg string, status int, log *slog.Logger) {
	msg = errorText(msg)
	w.publishFinal(r, broker.StateFailed, msg, status, log)
	end := func(ctx context.Context, release func()) {
		err := w.storeAnswered(ctx, d.JobID, broker.StateFailed, sync, log, func(j *broker.Job) {
			j.State, j.Error = broker.StateFailed, msg
		})
		release()
		if w.settleEnd(ctx, d, err, log) {
			// What Ollama answers a caller's mistake with (400: a model without tools or
			// chat, a bad option; 404: no such model) is the caller's to mend, not the
			// operator's. Every other status stays a warning: a 429 is the target busy,
			// and a proxy in front of it answers 401, 403, 413... for the operator to mend.
			level := slog.LevelWarn
			if status == http.StatusBadRequest || status == http.StatusNotFound {
				level = slog.LevelInfo
			}
			attrs := []any{"err", msg}
			if status != 0 { // none when the target gave no HTTP status (unreachable, an error line)
				attrs = append(attrs, "status", status)
			}
			log.Log(ctx, level, "job failed", attrs...)
		}
	}
	if sync {
		w.endLater(d, log, end)
		return
	}
	end(ctx, func() {})
}

// retry records a failed attempt and puts the job back with a delay, or fails it when its
// attempts are used up; either way, after a connection error, a proxy's word that the
// target is not there, or a stall, it pauses the worker until the target answers, and
// after the target's "not now" for a back-off (waitIfBusy). An async job's attempt that
// the target answered "not now" is not counted (ADR-0086): it waits for the target as it
// would in the queue; a sync caller gets the target's answer once the attempts are spent.
func (w *Worker) retry(ctx, bctx context.Context, d *broker.Lease, j *broker.Job, r *broker.StreamWriter, cause error, log *slog.Logger) {
	// On JetStream's last delivery (the consumers' MaxDeliver) a NAK would leave the
	// message in the queue, never delivered again; the MAX_DELIVERIES advisory covers
	// that too, but fires only once. A consumer reset at start (Config.Exclusive) restarts
	// this count and the server's together; the record's Attempt keeps the real tally.
	lastDelivery := d.NumDelivered >= uint64(w.store.Config().MaxDeliver())
	busyTarget := targetBusy(cause)
	uncounted := notCounted(cause, j.Sync)
	// On its last delivery a job with attempts left is requeued, not failed, when some of
	// this message's deliveries went to attempts not counted (notCounted: the target's
	// "not now" or a call that never reached it; a stop's hand-back): those spend the
	// deliveries MaxDeliver leaves over the attempts, and a busy spell or an outage would
	// otherwise fail the job at its next counted attempt, the first maybe. One whose every delivery was a counted attempt met the queue's own bound on
	// them (a MaxDeliver below the worker's limit) and fails, as before.
	requeue := lastDelivery && (uncounted || j.Attempt < w.cfg.maxAttempts && uint64(j.Attempt) < d.NumDelivered)
	if !uncounted && (j.Attempt >= w.cfg.maxAttempts || lastDelivery && !requeue) {
		// A target that answered "not now" to the last attempt too keeps its status: a
		// sync caller gets its 503 (and Retry-After), not a 502.
		status := 0
		var httpErr *ollama.HTTPError
		if errors.As(cause, &httpErr) {
			status = httpErr.StatusCode
		}
		w.fail(bctx, d, j.Sync, r, exhausted(cause.Error(), ""), status, log)
		w.waitIfGone(ctx, cause)
		w.waitIfBusy(ctx, cause)
		return
	}
	if hook := w.cfg.beforeRetry; hook != nil {
		hook(d.JobID)
	}
	err := w.storeRetrying(bctx, d.JobID, uncounted, func(rec *broker.Job) {
		rec.State, rec.Error = broker.StateRetrying, errorText(cause.Error())
		if uncounted && rec.Attempt == j.Attempt && rec.Attempt > 0 {
			rec.Attempt--
		}
	})
	if errors.Is(err, errEnded) {
		w.publishEnded(bctx, d.JobID, r, log)
		w.finish(bctx, d, log)
		return
	}
	if errors.Is(err, errCancelRequested) {
		w.cancelRun(bctx, d, r, log)
		return
	}
	if err != nil {
		log.Warn("store retrying state", "err", err)
	}
	r.Reset()
	delay := w.cfg.retryDelay(j.Attempt)
	if busyTarget {
		delay = w.busyWait()
	}
	switch {
	case requeue:
		// A NAK would leave it undelivered; a new message counts its deliveries anew. On
		// several Macs a job given up for its target's fault goes to another (ADR-0066).
		// A requeue the store refuses for now is tried again, the delivery held
		// (requeueLast): a NAK would have the delivery limit's advisory fail the job.
		// One the full queue refuses is kept, and run from if there is still no room
		// (park, ADR-0100).
		held := w.holdOff(bctx, d, j, cause)
		const what = "requeue a job on its last delivery"
		switch requeued, err := w.requeueLast(ctx, d, what, log); {
		case errors.Is(err, broker.ErrQueueFull):
			w.park(d, delay, log)
		case err != nil:
			log.Warn(what+"; trying a NAK", "err", err)
			if held {
				w.putBack(d, delay, log)
			} else {
				w.nak(d, delay, log)
			}
		case requeued:
			log.Warn("attempt failed on the job's last delivery; job requeued", "err", cause, "delay", delay, "attempt_counted", !uncounted, "left_elsewhere", held)
		}
	case w.holdOff(bctx, d, j, cause):
		// Not nak: this worker is not to look for it when the back-off ends (ADR-0066).
		log.Warn("attempt failed; job will retry, left to another Mac that has its model", "err", cause, "delay", delay, "hold_off", w.cfg.MaxWait)
		w.putBack(d, delay, log)
	case busyTarget:
		log.Warn("target busy; job will retry, worker waits", "err", cause, "delay", delay, "attempt_counted", !uncounted)
		w.nak(d, delay, log)
	default:
		log.Warn("attempt failed; job will retry", "err", cause, "delay", delay, "attempt_counted", !uncounted)
		w.nak(d, delay, log)
	}
	w.waitIfGone(ctx, cause)
	w.waitIfBusy(ctx, cause)
}

// notCounted reports whether an async job's attempt that failed with cause is given back
// rather than counted against FOREMAN_MAX_ATTEMPTS: the target answered "not now"
// (ADR-0086), or the request never reached it (ollama.NotSent: the Mac off, asleep or
// restarting, met by this call before a poll saw it; ADR-0089). Neither says anything of
// the job: counted, each outage a job met would spend one of its attempts, and with
// FOREMAN_MAX_ATTEMPTS=1 the first would fail it. A sync job's attempts all count: its
// caller waits on them (ADR-0046).
func notCounted(cause error, sync bool) bool {
	var gone *modelGoneError
	return errors.As(cause, &gone) || !sync && (targetBusy(cause) || ollama.NotSent(cause))
}

// modelGoneError is a job's call that the target answered 404 for its model, which the
// target's model list, polled again, no longer has: the model was deleted on this Mac
// since the last poll. On a shared NATS such a job is not failed but put back, its attempt
// not counted (a sync job's neither: its caller waits for the Mac that runs it), for a
// Mac that has the model; this worker takes no job of the model while its own list lacks
// it (Config.Runs), so it does not meet the job again (ADR-0029).
type modelGoneError struct {
	model, answer string
}

func (e *modelGoneError) Error() string {
	return fmt.Sprintf("model %q is no longer on this foreman's Ollama (it answered %q); the job waits for a Mac that has it", e.model, e.answer)
}

// modelLeft reports, after the target answered a job of queue token 404, whether the
// job's model has left this Mac on a shared NATS: the target's model list, polled again,
// no longer has it, so that Config.Runs now leaves its jobs to the other foremen. On a
// store of its own (one foreman runs every model), without Runs or an inventory, or when
// the list cannot be read, it reports false: the 404 fails the job, as Ollama's answer.
func (w *Worker) modelLeft(ctx context.Context, token string) bool {
	if w.cfg.Runs == nil || w.cfg.Inventory == nil || w.store.Config().Exclusive {
		return false
	}
	// A stop beginning now must not turn the answer into a failure: the poll has its bound.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), psTimeout)
	defer cancel()
	return w.cfg.Inventory.Refresh(pctx) == nil && !w.runsModelOf(pctx, token)
}

// waitIfGone pauses the worker (waitTarget) after an attempt that failed for want of its
// target: not reached (refused, reset, cut off, or a proxy in front of it saying so with
// a 502 or 504), or stalled. Also after the job's last attempt, or a sync job failed
// mid-answer: the next job would spend an attempt on the same target.
func (w *Worker) waitIfGone(ctx context.Context, cause error) {
	var connErr *ollama.ConnectionError
	var httpErr *ollama.HTTPError
	var stall *ollama.StallError
	var silent *silentTargetError
	if errors.As(cause, &connErr) || errors.As(cause, &httpErr) && httpErr.UpstreamDown() ||
		errors.As(cause, &stall) || errors.As(cause, &silent) {
		w.waitTarget(ctx, cause)
	}
}

// handBack returns an aborted job to the queue un-acked (foreman is stopping). The attempt
// it was on is not counted: the job did nothing wrong, and runs again. A job whose
// cancellation was requested ends canceled instead: nobody wants it run again. A sync job
// whose caller waits on this process stays out of the queue a while
// (Store.HandBackDelay): the shutdown cancels it meanwhile. It never runs again, so the
// attempt cut off was its last and counts. A sync job whose caller waits on another
// foreman (a shared NATS) and has part of the answer ends failed, as after a target cut
// off mid-answer (attemptFailed): another run could not be spliced into that answer, and
// would run for nobody.
func (w *Worker) handBack(ctx context.Context, d *broker.Lease, j *broker.Job, r *broker.StreamWriter, log *slog.Logger) {
	last := w.store.CallerHere(j)
	if j.Sync && !last && r.Published() {
		w.fail(ctx, d, true, r, errShutdown.Error(), 0, log)
		return
	}
	_, err := w.transition(ctx, d.JobID, fromLive, func(rec *broker.Job) {
		rec.State, rec.Error = broker.StateRetrying, errShutdown.Error()
		if rec.Attempt == j.Attempt && rec.Attempt > 0 && !last {
			rec.Attempt--
		}
	})
	if errors.Is(err, errEnded) {
		w.finish(ctx, d, log)
		return
	}
	if errors.Is(err, errCancelRequested) {
		w.cancelRun(ctx, d, r, log)
		return
	}
	if err != nil {
		log.Warn("store handed-back state", "err", err)
	}
	log.Info("job handed back to the queue", "reason", errShutdown)
	w.giveBack(ctx, d, log)
}

// giveBack returns delivered job d to the queue un-run as this process stops: NAKed,
// out of the queue for Store.HandBackDelay. A stop is no fault of the job's, but a NAK of
// JetStream's last delivery (the consumers' MaxDeliver, every foreman's deliveries
// counted) would leave its message undelivered and the MAX_DELIVERIES advisory would fail
// it unrun: a long job cut off by a shared NATS's rolling restarts. That one is requeued
// (a new message, its deliveries counted anew, at its queue's end) unless its caller
// waits on this process, which the shutdown cancels.
func (w *Worker) giveBack(ctx context.Context, d *broker.Lease, log *slog.Logger) {
	if d.NumDelivered >= uint64(w.store.Config().MaxDeliver()) && w.store.HandBackDelay(d) == 0 {
		err := w.requeue(ctx, d)
		if err == nil {
			log.Info("job requeued: a stop cut off its last delivery")
			return
		}
		if errors.Is(err, broker.ErrTerminal) {
			w.dropEnded(ctx, d, log)
			return
		}
		if errors.Is(err, broker.ErrQueueFull) && w.swapBack(ctx, d, log) {
			return
		}
		log.Warn("requeue a job a stop cut off on its last delivery; trying a NAK", "err", err)
	}
	w.nak(d, w.store.HandBackDelay(d), log)
}

// swapBack is giveBack's requeue of last delivery d in a full queue on a shared NATS,
// and reports whether it settled d: the old message, which fills the place the new one
// needs, is removed first. NAKed, the last delivery would be delivered no more, and the
// delivery limit's advisory on another foreman would fail the job unrun; kept (ADR-0100),
// it would leave with this process all the same. Should the publish then fail (a submit
// took the freed place), the job, without a message now, ends failed, as the advisory
// would have failed it. On a store of its own the NAK stands: the next start's reclaim
// delivers the message again (its consumer reset).
func (w *Worker) swapBack(ctx context.Context, d *broker.Lease, log *slog.Logger) bool {
	if w.store.Config().Exclusive {
		return false
	}
	w.settling(d)
	done := w.index.removing(d.Token, d.Seq)
	err := w.store.DeleteQueued(ctx, d.Seq)
	done(err == nil)
	if err != nil {
		log.Warn("remove the queue message of a job a stop cut off on its last delivery, to requeue it in the full queue", "err", err)
		return false
	}
	if err := w.queueAgain(ctx, d); err != nil {
		if errors.Is(err, broker.ErrTerminal) { // canceled meanwhile: nothing to put back
			_ = w.store.Finish(ctx, d)
			log.Info("job already ended; its queue message removed, not requeued")
			return true
		}
		msg := errorText("foreman stopped: the job's last delivery could not be put back in the full queue: " + err.Error())
		if _, terr := w.transition(ctx, d.JobID, fromUnended, func(j *broker.Job) {
			j.State, j.Error = broker.StateFailed, msg
		}); terr != nil && !errors.Is(terr, errEnded) {
			log.Error("store the failed state of a job a stop could not put back", "err", terr)
		}
		_ = w.store.Finish(ctx, d) // its stored body; the message is gone already
		log.Error("job failed: a stop cut off its last delivery, and the full queue took no new message for it", "err", err)
		return true
	}
	log.Info("job requeued: a stop cut off its last delivery in a full queue (its old message removed first)")
	return true
}

// bodyLost deals with a delivery whose large request body could not be read (err), and
// reports whether it settled it. A read the store did not answer is tried again, the
// delivery held, until it does (holdRead): a body read then leaves the delivery to run
// (false). A body that is gone fails the job, but only one that admit would run: an
// orphan, an ended job (Finish drops the body even when its ack fails), a spare copy, a
// canceled job or one whose caller is gone is settled as any delivery of it is.
func (w *Worker) bodyLost(ctx context.Context, d *broker.Lease, err error) bool {
	log := w.log.With("job_id", d.JobID, "model", d.Model)
	if broker.Transient(err) {
		w.setLeased(d.JobID)
		err = w.holdRead(ctx, d, err, "read request body", log, func(ctx context.Context) error { return w.readBody(ctx, d) })
		w.setLeased("")
	}
	switch {
	case err == nil:
		return false
	case w.isStopping(ctx):
		bctx, cancel := w.storeCtx(ctx)
		defer cancel()
		w.giveBack(bctx, d, log)
	case !errors.Is(err, broker.ErrBodyLost):
		// The store answered, with an error (a body whose digest does not match).
		log.Warn("read request body; will retry", "err", err)
		w.nak(d, w.cfg.RetryDelay, log)
	default:
		w.settleAdmitted(ctx, d, log, func(bctx context.Context, j *broker.Job) {
			w.fail(bctx, d, j.Sync, w.store.StreamWriter(d.JobID), "request body lost: "+err.Error(), 0, log)
		})
	}
	return true
}

// settleAdmitted settles a delivery that cannot run here (bodyLost, unknownKind): as any
// delivery of a job that is not to run when admit says so (an orphan, an ended or
// canceled job, a spare copy, a gone caller), else with settle, given the job's record
// and a context for the store's writes.
func (w *Worker) settleAdmitted(ctx context.Context, d *broker.Lease, log *slog.Logger, settle func(bctx context.Context, j *broker.Job)) {
	w.setLeased(d.JobID)
	defer w.setLeased("")
	release := w.keepInProgress(d, log) // as handle's: the reads may be slow
	defer release()
	bctx, cancel := w.storeCtx(ctx)
	defer cancel()
	j, _, ok := w.admit(ctx, bctx, d, nil, log)
	if !ok {
		return
	}
	settle(bctx, j)
}

// markWorking moves a loading job to working at its first frame: the model is in.
func (w *Worker) markWorking(ctx context.Context, id string, log *slog.Logger) {
	_, err := w.transitionLast(ctx, id, false, fromLoading, func(j *broker.Job) {
		j.State = broker.StateWorking
	})
	if err != nil && !errors.Is(err, errEnded) && ctx.Err() == nil {
		log.Warn("store working state", "err", err)
	}
}

func (w *Worker) publishFinal(r *broker.StreamWriter, state broker.State, msg string, status int, log *slog.Logger) {
	if err := r.Final(state, msg, status); err != nil {
		log.Warn("publish final stream marker", "err", err)
	}
}

// discard removes a queue message no job can be run from (broker.ErrUnusable): NAKed, it
// would come back until JetStream gives up on it, and then stay in the queue.
func (w *Worker) discard(d *broker.Lease, why error) {
	log := w.log.With("job_id", d.JobID, "model", d.Model)
	w.settling(d)
	if err := w.store.Discard(d, why.Error()); err != nil {
		log.Warn("remove unusable queue message", "seq", d.Seq, "err", err)
		return
	}
	w.index.touch(d.Token)
	log.Warn("unusable queue message removed", "seq", d.Seq, "subject", broker.QueueSubject(d.Token), "reason", why)
}

// purge removes every message on a queue subject of no model (see broker.TokenValid).
func (w *Worker) purge(ctx context.Context, token string) {
	bctx, cancel := w.storeCtx(ctx)
	defer cancel()
	if err := w.store.PurgeQueued(bctx, token); err != nil {
		w.log.Warn("remove queue messages of no model", "subject", broker.QueueSubject(token), "err", err)
		return
	}
	w.index.touch(token)
	w.log.Warn("queue messages of no model removed", "subject", broker.QueueSubject(token))
}

// sameModel reports whether model's jobs belong on queue token (an earlier foreman's
// token of the model's name included, broker.ModelOnToken).
func sameModel(model, token string) bool {
	k, err := broker.ParseQueueKey(token)
	return err == nil && broker.ModelOnToken(model, k.Model)
}

// finish acks a job that reached its end, with time of its own: the terminal write
// before it may have waited out a leader election.
func (w *Worker) finish(ctx context.Context, d *broker.Lease, log *slog.Logger) {
	ctx, cancel := w.storeCtx(ctx)
	defer cancel()
	w.settling(d)
	done := w.index.removing(d.Token, d.Seq)
	err := w.store.Finish(ctx, d)
	done(err == nil)
	if err != nil {
		log.Warn("ack job", "err", err)
	}
}

// nak puts a job back in the queue, available again after delay, and has the idle loop
// look for it when the delay ends.
func (w *Worker) nak(d *broker.Lease, delay time.Duration, log *slog.Logger) {
	if w.putBack(d, delay, log) && delay > 0 {
		w.noteRetry(time.Now().Add(delay))
	}
}

// noteRetry notes a back-off we caused that ends at: the idle loop looks for its job then,
// an idle wait under way included (retryNoted).
func (w *Worker) noteRetry(at time.Time) {
	w.mu.Lock()
	w.retries = append(w.retries, at)
	w.mu.Unlock()
	select {
	case w.retryNoted <- struct{}{}:
	default:
	}
}

// putBack puts a job back in the queue, available again after delay, and reports whether
// it was NAKed (with that delay). A job whose message JetStream drops (or may drop) at
// the queue's MaxAge before then is requeued instead, available at once: a NAK of a
// dropped message would leave the job nowhere, its record waiting with no message until
// the record too expired (a run that outlived the TTL has lost its message already).
// In a full queue, which refuses that requeue, the delivery is kept as a last one is
// (park, ADR-0100): requeued once the queue has room, else run from here. A job that
// ended meanwhile is dropped.
func (w *Worker) putBack(d *broker.Lease, delay time.Duration, log *slog.Logger) bool {
	if w.outlivesQueue(d, delay) {
		ctx, cancel := w.storeCtx(context.Background())
		err := w.requeue(ctx, d)
		cancel()
		switch {
		case err == nil:
			log.Info("job requeued: its queue message reached the job TTL")
			return false
		case errors.Is(err, broker.ErrTerminal):
			w.dropEnded(context.Background(), d, log)
			return false
		case errors.Is(err, broker.ErrQueueFull) && !w.isStopping(context.Background()):
			w.park(d, delay, log)
			return false
		}
		log.Warn("requeue job; trying a NAK", "err", err)
	}
	w.settling(d)
	var err error
	if delay > 0 {
		err = d.Msg.NakWithDelay(delay)
	} else {
		err = d.Msg.Nak()
	}
	if err != nil {
		log.Warn("nak job", "err", err)
	}
	return true
}

// dropEnded settles delivery d whose requeue found its job ended (broker.ErrTerminal:
// canceled while the delivery was held): acked, as admit drops an ended job's message.
func (w *Worker) dropEnded(ctx context.Context, d *broker.Lease, log *slog.Logger) {
	log.Info("job already ended; its queue message dropped, not requeued")
	w.finish(ctx, d, log)
}

// outlivesQueue is Store.OutlivesQueue (or the test's say).
func (w *Worker) outlivesQueue(d *broker.Lease, delay time.Duration) bool {
	if f := w.cfg.outlivesQueue; f != nil && f(d.JobID) {
		return true
	}
	return w.store.OutlivesQueue(d, delay)
}

// requeue puts delivered job d back into the queue as a new message (Store.Requeue),
// and settles d once that message is stored: a requeue that fails leaves d kept in
// progress, for a NAK or another try. A job that ended gives broker.ErrTerminal, d
// unsettled (dropEnded).
func (w *Worker) requeue(ctx context.Context, d *broker.Lease) error {
	if err := w.queueAgain(ctx, d); err != nil {
		return err
	}
	w.settling(d)
	w.store.DropRequeued(ctx, d)
	return nil
}

// queueAgain is Store.QueueAgain (with the test fault).
func (w *Worker) queueAgain(ctx context.Context, d *broker.Lease) error {
	if fault := w.cfg.requeueFault; fault != nil {
		if err := fault(d.JobID); err != nil {
			return err
		}
	}
	return w.store.QueueAgain(ctx, d)
}

// keepAlive tells JetStream delivery d is alive every AckWait/3 until stopped (stop may
// be called again) or ctx ends: a delivery held unrun (holdRead), its record left as a
// queued job's. Its ticks end before the delivery is settled.
func (w *Worker) keepAlive(ctx context.Context, d *broker.Lease, log *slog.Logger) (stop func()) {
	every := max(w.store.Config().AckWait/3, 10*time.Millisecond)
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(every)
		defer t.Stop()
		warned := false
		for {
			select {
			case <-t.C:
				// Once per delivery: a failure here (the connection closed) repeats every tick.
				if err := d.Msg.InProgress(); err != nil && !warned {
					warned = true
					log.Warn("extend job ack deadline; further failures of this delivery not logged", "err", err)
				}
			case <-done:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return sync.OnceFunc(func() { close(done); <-exited })
}

// begin records the start of a job for the selection and for Stop; loads is whether its
// runner was not loaded on the target (the run swaps it in).
func (w *Worker) begin(token string, loads bool, abort context.CancelCauseFunc) {
	runner := runnerOf(token)
	w.mu.Lock()
	defer w.mu.Unlock()
	// A pick the cap sent Current to the back of, but that found nothing ready before it,
	// goes on with the streak and keeps its start: while capped Current goes last at every
	// pick whatever the start, and when the cap yields to nothing (RunElsewhere), the
	// start's age is what lets another runner's old job still break the drain.
	if runner == w.current {
		w.consec++
	} else {
		w.current, w.consec = runner, 1
		// Only a swap starts the time another runner's job is passed over from: a
		// runner the target held already (several models resident) goes on with the
		// start of the streak before, or two such runners taking turns would each
		// start it afresh and keep a third runner's job waiting for good.
		if loads {
			w.streakAt = w.pickedAt
		}
	}
	if k, err := broker.ParseQueueKey(token); err == nil {
		if _, ok := w.runnerOpts[k.Model]; !ok && len(w.runnerOpts) >= w.cfg.learnedMax {
			maps.DeleteFunc(w.runnerOpts, func(model, _ string) bool {
				name, err := broker.ModelFromToken(model)
				return err != nil || !w.cfg.listed(name)
			})
		}
		w.runnerOpts[k.Model] = k.Opts
		w.currentClass = k.Class
	}
	w.abort = abort
	if w.hardStop {
		abort(errShutdown)
	}
}

// setLeased records the job whose message handle holds (see Worker.leased).
func (w *Worker) setLeased(id string) {
	w.mu.Lock()
	w.leased = id
	w.mu.Unlock()
}

func (w *Worker) end() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.abort = nil
	w.running = nil
	w.lastEnd = time.Now()
}

// storeCtx bounds the record writes that end an attempt; they must happen even when the
// run context has just ended.
func (w *Worker) storeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
}

// maxErrorText bounds a job's error as its record and its final marker carry it: a target
// may answer a failure with a body of up to a megabyte (a proxy's error page, say), which
// fits neither a record nor a marker, and the job would end nowhere.
const maxErrorText = 4 << 10

// errorText is msg cut to maxErrorText bytes (at a character's start) and marked so.
func errorText(msg string) string {
	if c, cut := broker.Clip(msg, maxErrorText); cut {
		return c + " … (truncated)"
	}
	return msg
}

func exhausted(last, fallback string) string {
	if last == "" {
		last = fallback
	}
	return "attempts exhausted: " + last
}
