package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// DefaultSyncOutageWait is Config.SyncOutageWait's default: long enough for Ollama to
// restart, or a Mac to reboot, short of what an interactive caller waits with no word.
const DefaultSyncOutageWait = time.Minute

// outage is a time when no reachable target can run a model's jobs (ADR-0046).
type outage struct {
	// since is when it began, as far as known: the start of the worker's pause for its
	// unreachable target or of the inventory's first unanswered poll, whichever came
	// first; for the other targets, when the last of those that list the model stopped
	// answering their foremen's polls (broker.Target.DownSince, as long before now as it
	// was before their entry's publication, plus the entry's age), the own one among them
	// when it lists the model too; zero when only its present is known (a target whose
	// foreman does not say since when).
	since time.Time
	cause string // the pause's error, or what the targets say
	own   bool   // the own target is the one down
	// unlisted: no live target lists the model (the own one cannot run it). A job whose
	// record says it runs can only run on a Mac whose foreman is gone: killed, its entry
	// expired (one that stops in order hands its job back before it marks its entry
	// stopped, ADR-0075).
	unlisted bool
}

// outageProbe bounds the poll that checks an outage's own target before a call is
// refused or canceled for it; outageFresh is how long a check that got no answer at all
// stands for the calls after it. A target that refuses connections answers a check at
// once; one that accepts them and answers nothing costs each check the whole bound, and
// without the verdict standing every call refused in such an outage waited that long.
const (
	outageProbe = 2 * time.Second
	outageFresh = 5 * time.Second
)

// outageChecks remembers the last check the own target did not answer.
type outageChecks struct {
	probe, fresh time.Duration // outageProbe and outageFresh; tests set others
	// downAt is when a check last got no answer, as time since base plus one (on the
	// monotonic clock: a step of the wall clock moves no window); 0 for never.
	base   time.Time
	downAt atomic.Int64
}

// noAnswer records a check that got no answer, now.
func (c *outageChecks) noAnswer() { c.downAt.Store(int64(time.Since(c.base)) + 1) }

// lastNoAnswer is when a check last got no answer; false for never.
func (c *outageChecks) lastNoAnswer() (time.Time, bool) {
	at := c.downAt.Load()
	return c.base.Add(time.Duration(at - 1)), at != 0
}

// confirmed reports whether the outage o still holds. The worker learns that its target
// is back at its next probe or the inventory's next poll, up to 30s later; so before a
// call is refused or its job canceled, the own target is polled once more (a poll in
// flight is shared), and a poll that gets through wakes the worker (the inventory's
// OnRecover) and lets the call wait for it. A check that got no answer within
// outageFresh, with no poll answered since, stands instead of a poll of its own: a target
// back up is found by the first check after that, or by any poll.
func (s *Server) confirmed(ctx context.Context, o outage) bool {
	if !o.own {
		return true
	}
	if s.downStands() {
		return true
	}
	// Answered, even with an error status (a proxy passing only the model calls): the
	// target is there, and the worker's next probe finds it so too.
	return ollama.Unreachable(s.refreshOwn(ctx, s.outageChecks.probe))
}

// refreshOwn polls the own target (sharing a poll in flight) within bound (none for 0),
// or within a check's bound while its polls go unanswered, and returns the poll's error.
// A poll that got no answer in time (not the caller leaving) stands as a check's verdict
// (downStands).
func (s *Server) refreshOwn(ctx context.Context, bound time.Duration) error {
	return s.pollOwn(ctx, bound, s.inv.Refresh)
}

// refreshOwnAfter is refreshOwn with a poll begun after the call (Inventory.RefreshAfter),
// for a judgement that must see a change made just before it: a poll in flight may have
// read the model list before it.
func (s *Server) refreshOwnAfter(ctx context.Context, bound time.Duration) error {
	return s.pollOwn(ctx, bound, s.inv.RefreshAfter)
}

// pollOwn is refreshOwn with refresh, the inventory's way to poll.
func (s *Server) pollOwn(ctx context.Context, bound time.Duration, refresh func(context.Context) error) error {
	if !s.inv.Snapshot().DownSince.IsZero() && (bound == 0 || bound > s.outageChecks.probe) {
		bound = s.outageChecks.probe
	}
	pctx := ctx
	if bound > 0 {
		var cancel context.CancelFunc
		pctx, cancel = context.WithTimeout(ctx, bound)
		defer cancel()
	}
	err := refresh(pctx)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		s.outageChecks.noAnswer()
	}
	return err
}

// downStands reports whether a check, or the inventory's last poll, got no answer from
// the own target within outageFresh, and no poll has been answered since (even with an
// error status).
func (s *Server) downStands() bool {
	snap := s.inv.Snapshot()
	if errors.Is(snap.Err, context.DeadlineExceeded) && time.Since(snap.LastPoll) < s.outageChecks.fresh {
		return true // the last poll ended just now, unanswered
	}
	down, ok := s.outageChecks.lastNoAnswer()
	if !ok {
		return false
	}
	answeredSince := !ollama.Unreachable(snap.Err) && snap.LastPoll.After(down)
	return time.Since(down) < s.outageChecks.fresh && !answeredSince
}

// targetOutage reports whether no reachable target can run a job for model now: the
// own target, when its worker runs the job, unreachable (the worker paused for it, or its
// polls go unanswered: refused, or accepted and never answered, an Ollama wedged as a
// whole) and no other live target that lists the model reachable; or, with several
// foremen, the own target lacking the model and every other that lists it unreachable,
// or none listing it. The own target's outage says nothing of a model its worker leaves
// to the others.
//
// A model no target lists is an outage from when its call first saw it (since unknown):
// the Mac that had it is gone (its foreman stopped, or its entry expired) and a job
// waiting for it waits for that Mac's return. A new call for such a model is Ollama's 404
// before it gets here; one already waiting would have waited with no bound.
func (s *Server) targetOutage(ctx context.Context, model string) (outage, bool) {
	own := s.ownOutage()
	ownDown := !own.since.IsZero()
	has := s.inv.HasModel(model)
	if !ownDown && has {
		return outage{}, false
	}
	others, err := s.readOtherTargets(ctx)
	if err != nil {
		s.log.Debug("read targets", "err", err)
		if ownDown && (has || !s.cfg.OwnModelsOnly) {
			return own, true
		}
		return outage{}, false // unknown: the next check reads them again
	}
	// The worker runs a model its target does not list only on a store of its own with
	// no other foreman live (the target answers the call); otherwise it leaves it to
	// the foreman whose Mac has it (the app's runsModel).
	ownRuns := has || !s.cfg.OwnModelsOnly && len(others) == 0
	if !ownDown && ownRuns {
		return outage{}, false
	}
	want := ollama.NormalizeModel(model)
	listed, known := false, true
	now, serverNow := time.Now(), s.store.ServerNow()
	var since time.Time // when the last of the targets that list the model went down
	for _, t := range others {
		if !t.HasModel(want) {
			continue
		}
		// A Mac listed reachable whose foreman is gone (killed: its last entry lives on
		// its TTL, its presence lapsed) runs no job: its outage is counted from when
		// this call first saw it, as one whose foreman does not say since when. (An
		// entry of a foreman from before boot ids counts as it says.)
		gone := t.Reachable && t.BootID != "" && !s.store.Present(ctx, t.BootID)
		if t.Reachable && !gone {
			return outage{}, false
		}
		listed = true
		if gone || t.DownSince.IsZero() || t.Updated.IsZero() {
			known = false
			continue
		}
		// Another foreman's clock may be off from ours: only lengths count, the time from
		// its target's first unanswered poll to its entry's publication (on its clock),
		// and the entry's age since (on the NATS server's). Without the age, an entry
		// written once and never again (its foreman stopped, ADR-0075) said the outage
		// began now at every look: a call waited until the entry lapsed.
		down := max(t.Updated.Sub(t.DownSince), 0)
		if !t.Stored.IsZero() {
			down += max(serverNow.Sub(t.Stored), 0)
		}
		if at := now.Add(-down); at.After(since) {
			since = at
		}
	}
	switch {
	case ownRuns && listed:
		// Other Macs with the model are down too: it is out only since the last of
		// them all went down, not since the own one did (it may have been down for long
		// while another Mac ran the model, and that one just had a blip).
		switch {
		case !known:
			own.since = time.Time{}
		case since.After(own.since):
			own.since = since
		}
		own.cause = fmt.Sprintf("no reachable Ollama has model %q", model)
		return own, true
	case ownRuns:
		return own, true
	case listed:
		o := outage{cause: fmt.Sprintf("no reachable Ollama has model %q", model)}
		if known {
			o.since = since
		}
		return o, true
	}
	return outage{cause: fmt.Sprintf("no reachable Ollama has model %q: no live foreman lists it", model), unlisted: true}, true
}

// ownOutage is the own target's outage, since.IsZero() when it has none: from the
// worker's pause for it or the inventory's unanswered polls, whichever began first. A
// worker waits for its call's first byte up to FOREMAN_FIRST_BYTE_TIMEOUT before it
// pauses for a target that accepts and never answers; the polls tell sooner.
func (s *Server) ownOutage() outage {
	var o outage
	if q, ok := s.cfg.Queue.(pauser); ok {
		if p := q.Paused(); p != nil && p.Reason == broker.PauseTargetUnreachable {
			// Began, not Since: a span on the monotonic clock, which a step of the
			// wall clock does not move (Since has no monotonic reading).
			o = outage{since: p.Began(), cause: p.Error, own: true}
		}
	}
	if snap := s.inv.Snapshot(); !snap.DownSince.IsZero() && snap.Err != nil &&
		(o.since.IsZero() || snap.DownSince.Before(o.since)) {
		o = outage{since: snap.DownSince, cause: snap.Err.Error(), own: true}
	}
	return o
}

// ownOutageOver returns the refusal of a call to the own target while its outage has
// lasted SyncOutageWait (confirmed by a poll), nil otherwise: a pass-through call (model
// list, show, embed, management) would wait on a target that takes connections and never
// answers with no bound, or fail after a connect timeout on one gone.
func (s *Server) ownOutageOver(ctx context.Context) error {
	o := s.ownOutage()
	if o.since.IsZero() {
		return nil
	}
	d := time.Since(o.since)
	if d < s.cfg.SyncOutageWait || !s.confirmed(ctx, o) {
		return nil
	}
	return refuse(ErrBadUpstream, fmt.Sprintf("ollama is unreachable (for %s: %s); a call waits for it at most %s "+
		"(FOREMAN_SYNC_OUTAGE_WAIT): retry later", roundDuration(d), o.cause, s.cfg.SyncOutageWait))
}

// ownWatch bounds a call to the own target by its outage (ADR-0046). It cancels the call
// once the outage has lasted SyncOutageWait while the call has been waiting on the target
// as long: for the answer's headers, or inside one read of its body. A stream that
// delivers is being answered (a pull's progress through a long download, while a busy
// Ollama leaves the polls unanswered), and time the relay spends writing to a slow client
// is not the target's; one stalled because its target hung as a whole would hold its
// client forever.
type ownWatch struct {
	ctx       context.Context // the call's; canceled with the refusal as its cause
	cancel    context.CancelCauseFunc
	endChecks context.CancelFunc
	ended     chan struct{} // closed once the checks have ended
	began     time.Time
	// waiting is since when the call has been waiting on the target, as time since began
	// plus one: from began for the headers, then from the start of each read of the body
	// until it returns; 0 while it does not wait (between reads). The body is read on the
	// handler's goroutine, the checks run on the watch's.
	waiting atomic.Int64
	inBody  atomic.Bool // the headers have come
	// headersWait and bodyWait bound the wait for the headers and for one read of the
	// body: SyncOutageWait, and Config.bodyWait (SyncOutageWait unless a test sets it).
	headersWait, bodyWait time.Duration

	mu      sync.Mutex
	stopped bool
	refusal error // what the watch canceled ctx with
}

// watchOwnOutage starts a watch of a call made with its ctx, checked every
// syncCheckEvery until it cuts the call or is stopped.
func (s *Server) watchOwnOutage(parent context.Context) *ownWatch {
	ctx, cancel := context.WithCancelCause(parent)
	checks, endChecks := context.WithCancel(ctx)
	w := &ownWatch{ctx: ctx, cancel: cancel, endChecks: endChecks, ended: make(chan struct{}), began: time.Now(),
		headersWait: s.cfg.SyncOutageWait, bodyWait: s.cfg.bodyWait}
	w.waitFrom() // for the headers
	go func() {
		defer close(w.ended)
		t := time.NewTicker(s.syncCheckEvery())
		defer t.Stop()
		for {
			select {
			case <-checks.Done():
				return
			case <-t.C:
			}
			// A call not waiting on the target that long is being answered: no poll is
			// spent on it, however long the polls fail.
			if !w.idle() {
				continue
			}
			if err := s.ownOutageOver(checks); err != nil && w.cut(checks, err) {
				return
			}
		}
	}()
	return w
}

// idle reports whether the call has been waiting on the target for as long as it may in
// an outage: SyncOutageWait for the headers, one read of the body bodyWait.
func (w *ownWatch) idle() bool {
	at := w.waiting.Load()
	wait := w.headersWait
	if w.inBody.Load() {
		wait = w.bodyWait
	}
	return at != 0 && time.Since(w.began)-time.Duration(at-1) >= wait
}

// waitFrom marks the call waiting on the target from now; stopWaiting ends that.
func (w *ownWatch) waitFrom()    { w.waiting.Store(int64(time.Since(w.began)) + 1) }
func (w *ownWatch) stopWaiting() { w.waiting.Store(0) }

// cut cancels the call with refusal, unless the watch was stopped (or is stopping) or
// the answer showed life while the outage was confirmed. It reports whether it did.
func (w *ownWatch) cut(checks context.Context, refusal error) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped || checks.Err() != nil || !w.idle() {
		return false
	}
	w.refusal = refusal
	w.cancel(refusal)
	return true
}

// answered moves the watch on to resp's body, which it wraps to see its reads. It
// returns the refusal instead, resp's body closed, when the watch has already cut the
// call.
func (w *ownWatch) answered(resp *http.Response) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.refusal != nil {
		resp.Body.Close()
		return w.refusal
	}
	w.stopWaiting()
	w.inBody.Store(true)
	resp.Body = ownBody{ReadCloser: resp.Body, w: w}
	return nil
}

// cutWith is the refusal the watch cut the call with, nil if it did not.
func (w *ownWatch) cutWith() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.refusal
}

// stop ends the watch and returns the refusal it cut the call with, nil if none. Once it
// has returned the watch cancels nothing (a check under way is ended, and its verdict
// dropped), so ctx can carry on.
func (w *ownWatch) stop() error {
	w.mu.Lock()
	w.stopped = true
	r := w.refusal
	w.mu.Unlock()
	w.endChecks()
	<-w.ended
	return r
}

// release stops the watch and ends the call's context.
func (w *ownWatch) release() {
	w.stop()
	w.cancel(nil)
}

// ownBody is an answer's body as its watch sees it: a read waits on the target while it
// lasts, and a read the watch's cut ended fails with the refusal, which says why.
type ownBody struct {
	io.ReadCloser
	w *ownWatch
}

func (b ownBody) Read(p []byte) (int, error) {
	b.w.waitFrom()
	n, err := b.ReadCloser.Read(p)
	b.w.stopWaiting()
	if err != nil && !errors.Is(err, io.EOF) {
		if refusal := b.w.cutWith(); refusal != nil {
			err = refusal
		}
	}
	return n, err
}

// doOwn is s.target.Do bounded by the own target's outage: refused at once while it has
// lasted SyncOutageWait; canceled once it has while the answer's headers are awaited, or
// while its body, read through resp.Body, has delivered nothing for SyncOutageWait (see
// ownWatch). release ends the call's context and its watch: call it once the answer's
// body is read.
func (s *Server) doOwn(ctx context.Context, method, path string, header http.Header, body io.Reader) (resp *http.Response, release func(), err error) {
	if err := s.ownOutageOver(ctx); err != nil {
		return nil, func() {}, err
	}
	w := s.watchOwnOutage(ctx)
	resp, err = s.target.Do(w.ctx, method, path, header, body)
	if err == nil {
		err = w.answered(resp)
	} else if refusal := w.stop(); refusal != nil {
		err = refusal
	}
	if err != nil {
		w.release()
		return nil, func() {}, err
	}
	return resp, w.release, nil
}

// refuseInOutage refuses a sync call for model while the outage its job would wait out
// has lasted SyncOutageWait already: such a job would only wait, then be canceled.
func (s *Server) refuseInOutage(ctx context.Context, model string) error {
	o, out := s.targetOutage(ctx, model)
	if !out || o.since.IsZero() {
		return nil
	}
	d := time.Since(o.since)
	if d < s.cfg.SyncOutageWait || !s.confirmed(ctx, o) {
		return nil
	}
	return refuse(ErrBadUpstream, fmt.Sprintf("ollama is unreachable (for %s: %s); a sync call waits for it at most %s "+
		"(FOREMAN_SYNC_OUTAGE_WAIT): retry later, or queue the work with POST /jobs",
		roundDuration(d), o.cause, s.cfg.SyncOutageWait))
}

// syncCheckEvery is how often a sync response looks at its job: often enough to end an
// outage's wait within a quarter of SyncOutageWait.
func (s *Server) syncCheckEvery() time.Duration {
	return min(syncCheckInterval, max(s.cfg.SyncOutageWait/4, 10*time.Millisecond))
}

// outageWatch ends a sync response whose job has waited SyncOutageWait for an
// unreachable target: the job is canceled and the client told why. A caller on the
// Ollama or OpenAI API holds a connection for its answer, often with no timeout of its
// own; work that is to wait out an outage goes to POST /jobs.
type outageWatch struct {
	s     *Server
	job   *broker.Job
	wait  time.Duration
	first time.Time // when this response first saw the outage (its since unknown); zero while none
}

// over checks the outage while the record j says the job waits, or runs with no answer
// from the target yet (answered: a frame came); it returns the error to answer with
// once the job was canceled for it. A running job counts only an outage of the target
// it runs on: the own target's (one that accepted the call and answers nothing, not even
// the polls), or that of every other that has its model, as their foremen publish it.
func (ow *outageWatch) over(ctx context.Context, j *broker.Job, answered bool, log *slog.Logger) error {
	waiting := j.State == broker.StateQueued || j.State == broker.StateRetrying
	if !waiting && answered {
		ow.first = time.Time{}
		return nil
	}
	o, out := ow.s.targetOutage(ctx, j.Model)
	now := time.Now()
	switch {
	// A running job counts when its target is the own one, when every Mac that has its
	// model is down by its foreman's word (since known): it runs on one of them, or when
	// no live Mac has its model: it runs on one whose foreman is gone.
	case !out || !waiting && !o.own && !o.unlisted && o.since.IsZero():
		ow.first = time.Time{}
		return nil
	case ow.first.IsZero():
		ow.first = now
	}
	since := o.since
	if since.IsZero() {
		since = ow.first
	}
	if now.Sub(since) < ow.wait || !ow.s.confirmed(ctx, o) {
		return nil
	}
	reason := fmt.Sprintf("ollama unreachable for %s (FOREMAN_SYNC_OUTAGE_WAIT is %s)", roundDuration(now.Sub(since)), ow.wait)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	j, err := ow.s.store.Cancel(cctx, ow.job.ID, reason)
	if err != nil {
		if !errors.Is(err, broker.ErrTerminal) {
			log.Warn("cancel job waiting out an outage", "err", err)
		}
		return nil // it ended meanwhile (its end is on its way), or the next check tries again
	}
	if j.State == broker.StateCanceled {
		log.Info("job canceled", "reason", reason, "cause", o.cause)
	} else {
		// Running: the worker ends it and logs "job canceled" then, with its attempt.
		log.Info("job cancel requested", "reason", reason, "cause", o.cause)
	}
	return refuse(ErrBadUpstream, fmt.Sprintf("ollama was unreachable for %s while the call waited (%s); "+
		"the job was canceled: retry later, or queue the work with POST /jobs", roundDuration(now.Sub(since)), o.cause))
}

// roundDuration rounds d for a message: to the second, or the millisecond below one.
func roundDuration(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Second)
}
