package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Worker runs queued jobs one at a time. Build it with New, run it with Run, stop it with
// Stop (or by ending Run's context).
type Worker struct {
	cfg   Config
	store *broker.Store
	log   *slog.Logger
	index *queueIndex

	wake     chan wakeup   // the newest job published (capacity 1)
	idling   atomic.Bool   // the loop waits in idle for a wake-up
	stopping chan struct{} // closed by Stop: take no new job
	stopOnce sync.Once
	runOnce  sync.Once
	done     chan struct{} // closed when Run returns
	// retryNoted tells an idle wait that a back-off was noted in retries meanwhile (a job
	// put back in the background, its end not stored): the wait ends with it, not at
	// IdlePoll (capacity 1).
	retryNoted chan struct{}

	// bg tracks the bookkeeping of a finished job (result, terminal state, ack), which runs
	// while the next job starts; bgSlot keeps it to one at a time. bgMu orders a start
	// from another goroutine (a delivery-limit advisory's) with Run's wait: once that has
	// begun (bgShut) nothing starts (goBackground).
	bg     sync.WaitGroup
	bgSlot chan struct{}
	bgMu   sync.Mutex
	bgShut bool

	keepMu  sync.Mutex
	keepers map[*broker.Lease]*keeper // deliveries kept in progress (progress.go)

	mu     sync.Mutex
	recent map[string]struct{} // ids of jobs fetched lately (stale wake-ups)
	// sinceLook are the jobs published that the loop's last look may not have seen, each
	// with when it was noted last: those noted since that look began, and those noted
	// less than publishSettle before it (a job is announced, and NATS's copy of its
	// message can come, before the stream has stored it) that this worker has not
	// fetched. nil once more than maxSinceLook came (lookNeeded); lostAt is then the
	// last publish not noted.
	sinceLook map[string]time.Time
	lostAt    time.Time
	// quiet says the loop's last look found nothing waiting: no queue head, or only jobs
	// this worker was finishing with nothing behind them. Only the loop touches it.
	quiet    bool
	started  bool
	hardStop bool                    // Stop's deadline passed: abort any job at once
	abort    context.CancelCauseFunc // aborts the running job; nil when idle
	retries  []time.Time             // ends of the retry back-offs we caused
	parked   []parkedLease           // last deliveries kept for a full queue (park.go)
	// takenUp is the job of the parked delivery whose due runParked deals with, until
	// it is kept again or handled: kept still, though out of parked (isParked).
	takenUp  string
	unparked bool               // the parked deliveries were handed back (unparkAll)
	held     map[string]heldOff // jobs left to another Mac, by id (elsewhere.go)
	current  string             // runner (model and load options) of the job run last
	consec   int                // jobs of current in a row
	// streakAt is when current's streak began (choice.StreakStart): the pick, on the
	// server's clock (pickedAt), of the job begin counted as the first of current's in a
	// row, when it swapped its runner in (else the start before stays).
	streakAt time.Time
	// pickedAt is when took gave the last job its turn, on the server's clock.
	pickedAt time.Time
	// currentClass is the class of the job run last: current's streak is that class's.
	currentClass broker.Priority
	lastEnd      time.Time // when the last job run against the target ended
	// lastModel is the runner the target last answered a job with (its model then
	// loaded); "" once an attempt got no answer of its model or the target went away,
	// until /api/ps is read again (psDue).
	lastModel string
	// psDue is set when what the target has loaded must be read again before a pick
	// counts on it, even for the runner run last: an attempt got no answer of its model
	// (its model may be absent, or the target restarted empty), or the target was not
	// there. Only then does a drain of one runner read /api/ps.
	psDue bool
	// unloaded is the runner an answered call with keep_alive 0 left unloaded (Ollama
	// expires it as the call ends, a moment after its answer): an /api/ps read in that
	// moment still lists it, so it counts as not loaded until a job of it is answered
	// again, or a poll after the last job's end no longer lists it (the expiry is over:
	// one that lists it later has it loaded again, by another client). "" for none.
	unloaded string
	// runnerOpts is the load options each model (token) last ran with: the options its
	// runner has while /api/ps lists it. Past Config.learnedMax models, those the target
	// lists no more are forgotten (begin).
	runnerOpts map[string]string
	// served is when each queue last had its turn (picks counts them): see choice.Served.
	// Only the Run loop writes them (under mu: the queue view reads them).
	served map[string]uint64
	picks  uint64
	// seen is what the last joinTurns saw of the queues: a queue whose head is newer has
	// none of its jobs of then left, and forgets its turn (ranOut).
	seen turnsSeen
	// classPicked is when each class last had a pick: see choice.ClassPicked.
	classPicked [3]time.Time
	// cutJobs is, by queue, the message of each job cut short by the last stop, until it
	// is taken (choice.Resume, resume.go); resumeRead is set once the first pick looked.
	cutJobs    map[string]uint64
	resumeRead bool
	busyInRow  int    // the target's "not now" answers in a row (countBusy)
	stall      string // why the target counts as stalled (TargetStall); "" when it is not
	// stallSilent marks a stall of a target that answered no poll (ADR-0049): it ends when
	// a poll after stallAt, when it was recorded, is answered.
	stallSilent bool
	stallAt     time.Time
	// running is the job being run, for the queue view; nil when idle. finishing are the
	// jobs whose result is being stored in the background: they wait no more.
	running   *runningJob
	finishing map[string]bool
	// leased is the job whose queue message handle holds, from its first look at it to
	// its last write; "" between jobs.
	leased string
	// paused says why the worker waits (waitTarget, waitStore); nil while it runs.
	paused *broker.Pause
	// written is what the worker last wrote of each running attempt's record.
	written writtenRecs

	// laterLooks is the last look at each later foreman's queue key (laterkey.go). Only
	// the Run loop uses it.
	laterLooks map[string]laterLook

	// The queue view (view.go): a copy of the queue's headers, the learned durations and
	// the last view computed.
	backlog *broker.Backlog
	times   *durations
	viewMu  sync.Mutex
	view    *broker.QueueView
	// viewUntil is when the view stops being served to a caller that asks for no newer
	// one: a quarter second after it was computed, or as long after as it took to
	// compute, whichever is later (QueueView).
	viewUntil time.Time
}

// Causes that abort a running job.
var (
	errCanceled = errors.New("job canceled")
	errShutdown = errors.New("foreman shutting down")
)

// New validates cfg and builds a Worker.
func New(cfg Config) (*Worker, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.maxAttempts <= 0 {
		cfg.maxAttempts = cfg.Store.Config().MaxAttempts
	}
	return &Worker{
		cfg:        cfg,
		store:      cfg.Store,
		log:        cfg.Logger,
		index:      newQueueIndex(cfg.Store),
		wake:       make(chan wakeup, 1),
		retryNoted: make(chan struct{}, 1),
		bgSlot:     make(chan struct{}, 1),
		keepers:    map[*broker.Lease]*keeper{},
		recent:     map[string]struct{}{},
		sinceLook:  map[string]time.Time{},
		served:     map[string]uint64{},
		runnerOpts: map[string]string{},
		finishing:  map[string]bool{},
		laterLooks: map[string]laterLook{},
		backlog:    cfg.Store.Backlog(),
		times:      newDurations(cfg.learnedMax, cfg.listed),
		stopping:   make(chan struct{}),
		done:       make(chan struct{}),
	}, nil
}

// Run takes jobs until ctx ends or Stop is called. A job still running when ctx ends is
// aborted and handed back un-acked. Run may be called once; it returns nil on a stop.
func (w *Worker) Run(ctx context.Context) error {
	first := false
	w.runOnce.Do(func() { first = true })
	if !first {
		return errors.New("worker: Run called twice")
	}
	w.mu.Lock()
	w.started = true
	w.mu.Unlock()
	defer close(w.done)
	defer w.waitBackground() // the last job's bookkeeping ends before Run does
	// ctx ending stops the worker as Stop does (the loop already takes an ended ctx for a
	// stop): a result write that goes on until the worker stops (storeDone) must see it,
	// or the loop, waiting for that write's background slot to end the next job, and the
	// wait above would never end.
	defer context.AfterFunc(ctx, func() { w.stopOnce.Do(func() { close(w.stopping) }) })()

	stopWake, err := w.store.OnQueued(func(p broker.Published) {
		w.trace(p.JobID, StageWoken)
		w.published(p.JobID)
		if p.Requeued {
			// The job waits again, in a new message: taken before (here, or by another
			// foreman that gave it back), its wake-up is no stale one.
			w.unfetched(p.JobID)
		}
		idle := w.idling.Load()
		w.poke(wakeup{token: p.Token, jobID: p.JobID, kind: p.Kind, body: p.Body, fresh: idle, created: p.Created})
		if p.Sync && idle {
			// A sync submit of this process calls here, before its writes: let the woken
			// loop run (and call the target) first; the writes only wait for the disk,
			// and would queue it behind them (ADR-0034). An async submit's caller waits
			// for its 202 instead, not for the answer: it keeps its turn.
			runtime.Gosched()
		}
	})
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	defer stopWake()
	// A cancel deletes a waiting job's message; one at a queue's head leaves the index a
	// stale head when a job is queued on the same queue before the next pick.
	defer w.store.OnQueueRemoved(w.index.removed)()
	// So does an end through another process (a cancel through another foreman's gateway,
	// a job another Mac ran), whose state event every foreman gets: one subscription to
	// every job's events, which the worker's watch of its running jobs holds already.
	// This worker's own runs are not left out, though their ack marks their queue: a
	// record naming this foreman as its attempt's runner may have been ended by another
	// (failed at its delivery limit or its TTL after its last attempt ran here), with
	// no ack from here. An own end costs nothing more: its queue, marked by the ack, is
	// read at the next look anyway.
	stopEnded, err := w.store.OnJobEvents(func(j *broker.Job) {
		if !j.State.Terminal() {
			return
		}
		w.index.jobEnded(j.ID)
	})
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	defer stopEnded()
	stopAdv, err := w.watchDeliveryLimit(ctx)
	if err != nil {
		return err
	}
	defer stopAdv()
	// The first look for jobs that waited a job TTL comes before the first pick: at a
	// start with FOREMAN_JOB_TTL lowered, a job waiting longer than it was else tried
	// first when the pick won the race with the look beside it (under load), and ended
	// expired "tried once" by a later look, or run past its TTL.
	var looks expireLooks
	w.expire(ctx, &looks)
	w.bg.Add(1)
	go func() {
		defer w.bg.Done()
		w.expireLoop(ctx, &looks)
	}()
	if w.cfg.Inventory != nil && w.cfg.TargetSilence > 0 {
		// Until the loop below has ended, a stop included: the job a stop lets finish
		// may be the one a silent target holds.
		loopDone := make(chan struct{})
		defer close(loopDone) // before the wait for bg above
		w.bg.Add(1)
		go func() {
			defer w.bg.Done()
			w.silenceLoop(ctx, loopDone)
		}()
	}

	w.log.Info("worker started", "max_attempts", w.cfg.maxAttempts, "max_consecutive", w.cfg.MaxConsecutive, "max_wait", w.cfg.MaxWait)
	defer w.log.Info("worker stopped")
	w.sweep(ctx)
	fails, misses := 0, 0
	// A NATS outage fails every pick: warned of once, then once per failurelog.Every.
	var picks failurelog.Loop
	woken := false // a publish was seen and its job not yet fetched
	// skipLook says the last job came to an idle worker that had found nothing waiting,
	// and nothing was published since but jobs this worker fetched: the loop idles
	// without a look at the queue (lookNeeded).
	skipLook := false
	// held is the early call of a job woken for whose fetch came up empty: its message
	// may reach the consumer later than wakeWait (a slow disk), and the short rechecks
	// may still deliver it. Dropping the call would abort a generation under way, and the
	// run would make it again.
	var held *earlyCall
	defer func() { w.drop(held) }()
	defer w.unparkAll()
	for !w.isStopping(ctx) {
		if p, ok := w.dueParked(time.Now()); ok {
			w.drop(held)
			held, skipLook = nil, false
			w.runParked(ctx, p)
			continue
		}
		quietWake := false    // the job taken came to a worker whose last look found nothing
		var ahead *recordRead // the record of a job woken for, read while it is fetched
		early := held         // the call of a job woken for, begun while it is fetched
		held = nil
		var (
			d      *broker.Lease
			queued bool
			err    error
		)
		if skipLook {
			skipLook = false // nothing can wait but the job just finished (lookNeeded)
		} else {
			d, queued, err = w.next(ctx)
		}
		if err != nil {
			w.drop(early)
			if w.isStopping(ctx) {
				return nil
			}
			fails++
			picks.Failed(w.log, "select next job", err)
			w.sleep(ctx, min(w.cfg.retryDelay(fails), maxPickRetry))
			continue
		}
		fails = 0
		picks.Worked(w.log, "select next job")
		if d == nil {
			// A message the stream has stored can reach its consumer a moment later, so a
			// fetch that comes up empty while jobs are queued is tried again shortly
			// before the loop idles until a publish or a timer.
			var wait time.Duration
			if (queued || woken) && misses < len(recheck) {
				wait = recheck[misses]
				misses++
			} else {
				misses, woken = 0, false
				w.drop(early) // the rechecks are over: its job did not come
				early = nil
			}
			u := w.idle(ctx, wait)
			// The held call stays for the next recheck, which may deliver its job: also on
			// a wake-up for a later job of its queue, which delivers the oldest first.
			if u.token == "" || !w.runs(ctx, u.token) || early.forJob(u.jobID) || early.onQueue(u.token) {
				held = early
				continue
			}
			w.drop(early) // another job's wake-up: its call must not overlap that one's
			early = nil
			if w.probeFirst(false) {
				// The polls say the target is not there: the pick probes it first.
				woken = true
				continue
			}
			if u.replaced || !u.fresh && w.index.hasOther(u.token, func(t string) bool { return w.runs(ctx, t) }) {
				// Other jobs wait besides the woken one: one whose wake-up this one replaced,
				// or, for a wake-up left over from while the loop was busy or paused (an
				// outage), the queues the last look found. The pick rule orders them; a
				// fetch of the woken job's queue would run the newest publish first.
				woken = true
				continue
			}
			// A job was published while nothing could run: wait for it on its model's
			// consumer, which answers the moment the stream has stored it, and read its
			// record (and, for another runner, the loaded models) meanwhile; its target call
			// may begin meanwhile too (callEarly). Should the fetch fail, the short rechecks
			// above still look for it.
			early = w.callEarly(ctx, u)
			misses, woken = 0, true
			ahead = w.readAhead(ctx, u.jobID, u.token, u.created)
			quietWake = w.quiet
			d, err = w.store.NextWait(ctx, u.token, wakeWait)
			if err = w.fetchFaulted(d, err); d != nil && err != nil {
				// A delivery no job can run from: removed or retried now. Or one whose body
				// was read once the store answered: it runs, its record read afresh.
				if w.unusable(ctx, d, err) {
					d = nil
				}
				err = nil
				w.drop(early)
				early = nil
				ahead.wait()
				ahead = nil
			}
			if err != nil || d == nil {
				if err != nil {
					w.log.Warn("fetch a just-published job", "err", err)
					w.drop(early)
				} else {
					held = early // not there yet: the rechecks may deliver it
				}
				ahead.wait()
				continue
			}
		}
		misses, woken = 0, false
		w.trace(d.JobID, StageFetched)
		w.resumed(d) // taken, by a pick or a wake-up: its precedence ends (ADR-0044)
		w.fetched(d.JobID)
		w.handle(ctx, d, ahead, early)
		ahead.wait()
		skipLook = quietWake && !w.lookNeeded(d)
	}
	return nil
}

// maxSinceLook bounds the jobs published between two looks that the loop keeps; more, and
// the next look is made.
const maxSinceLook = 64

// published notes a job published (a submit's announcement, or a queue message's copy
// from NATS). It does not block.
func (w *Worker) published(id string) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sinceLook != nil && len(w.sinceLook) >= maxSinceLook {
		w.dropFetchedLocked() // stored, and run since: any look may forget them
	}
	if w.sinceLook == nil || len(w.sinceLook) >= maxSinceLook {
		w.sinceLook, w.lostAt = nil, now
		return
	}
	w.sinceLook[id] = now
}

// publishSettle is how long after a job's publish was noted a look may still not see its
// message: the stream stores it once the publish is answered, which its retries may take
// (broker.Config.RetryWindow, a try of up to as long begun at its end).
func (w *Worker) publishSettle() time.Duration { return 2 * w.store.Config().RetryWindow }

// lookBegins forgets the publishes noted so far whose messages the look about to begin
// reads: those of jobs this worker fetched, and those noted publishSettle ago or longer.
// A publish noted later may not be stored yet (lookNeeded).
func (w *Worker) lookBegins() {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	settle := w.publishSettle()
	if w.sinceLook == nil {
		if now.Sub(w.lostAt) < settle {
			return // a publish not noted may not be stored yet: the next job looks again
		}
		w.sinceLook = map[string]time.Time{}
		return
	}
	w.dropFetchedLocked()
	for id, at := range w.sinceLook {
		if now.Sub(at) >= settle {
			delete(w.sinceLook, id)
		}
	}
}

// dropFetchedLocked forgets the publishes noted of jobs this worker fetched: their messages
// were stored. One that becomes ready again without a publish was put back by this worker
// (retries). w.mu must be held.
func (w *Worker) dropFetchedLocked() {
	for id := range w.sinceLook {
		if _, ok := w.recent[id]; ok {
			delete(w.sinceLook, id)
		}
	}
}

// lookNeeded reports whether, after the job of delivery d that came to an idle worker
// whose last look found nothing waiting (quiet), the loop must look at the queue before it
// idles. On foreman's own store (Config.EarlyCall) a job enters the queue only by a
// publish, which this worker sees, and becomes ready again without one only from a
// message that was in the queue at that look, or from d's own. So when d's message is
// gone (its removal confirmed) or leaves with the ack of an end being stored, and every
// job published that look may not have seen (sinceLook: published since it began, or
// too shortly before it to be stored) is one this worker fetched, the queue holds nothing to
// run, and the look (a stream info request and three or four reads) would find nothing.
// A publish seen during the idle wait that follows wakes it, as ever. Anything else (d
// put back for a retry, requeued, kept), or a store shared with other foremen, looks.
//
// A back-off still noted (retries) looks too: a job put back since the look (another's
// end not stored, in the background) is ready again once it ends, with no publish, and
// the idle wait forgets a back-off that ended over retryGrace before it began.
func (w *Worker) lookNeeded(d *broker.Lease) bool {
	if !w.cfg.EarlyCall || !w.quiet || !(w.isFinishing(d.JobID) || w.index.confirmed(d.Seq)) {
		return true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sinceLook == nil || len(w.retries) > 0 {
		return true
	}
	for j := range w.sinceLook {
		if _, ok := w.recent[j]; !ok {
			return true
		}
	}
	return false
}

// sweep cancels, before the first pick, the queued sync jobs whose caller is gone, so
// they neither run nor hold up the jobs behind them. A failure only logs: each such job
// is checked again when it is picked.
func (w *Worker) sweep(ctx context.Context) {
	if hook := w.cfg.beforeSweep; hook != nil {
		hook()
	}
	sctx, cancel := w.storeCtx(ctx)
	defer cancel()
	// A stop ends it: with the store unreachable it would wait its whole timeout, and the
	// stop (a shutdown's deadline) with it. The next start sweeps again.
	sctx, unstop := w.untilStop(sctx)
	defer unstop()
	n, err := w.store.CancelAbandoned(sctx)
	if err != nil && w.isStopping(ctx) {
		return
	}
	if err != nil {
		w.log.Warn("cancel sync jobs of dead callers", "err", err, "canceled", n)
		return
	}
	if n > 0 {
		w.log.Info("sync jobs of dead callers canceled", "canceled", n, "reason", broker.CallerGoneReason)
	}
}

// recheck spaces the fetches retried when jobs are queued but none was delivered.
var recheck = []time.Duration{time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond}

// Stop makes Run take no new job, lets the running one finish until ctx ends, then aborts
// it and hands it back un-acked; it returns when Run has returned. Safe to call twice.
func (w *Worker) Stop(ctx context.Context) error {
	w.stopOnce.Do(func() { close(w.stopping) })
	w.mu.Lock()
	started, r := w.started, w.running
	w.mu.Unlock()
	if !started {
		return nil
	}
	if r != nil {
		// The stop may wait long for it (FOREMAN_SHUTDOWN_TIMEOUT): an operator who
		// stopped foreman sees why nothing happens meanwhile.
		attrs := []any{"job_id", r.id, "model", r.model}
		if dl, ok := ctx.Deadline(); ok {
			attrs = append(attrs, "at_most", time.Until(dl).Round(time.Second))
		}
		w.log.Info("waiting for the running job to finish before stopping; at the deadline it goes back to the queue", attrs...)
	}
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
	}
	w.mu.Lock()
	w.hardStop = true
	if w.abort != nil {
		w.abort(errShutdown)
	}
	w.mu.Unlock()
	<-w.done // the hand-back is bounded by storeTimeout
	return nil
}

// untilStop is ctx, ended also by Stop: for waits before a job starts, which Stop does
// not abort otherwise.
func (w *Worker) untilStop(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	// Ends with ctx: the caller cancels it as soon as the wait is over.
	go func() {
		select {
		case <-w.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func (w *Worker) isStopping(ctx context.Context) bool {
	select {
	case <-w.stopping:
		return true
	case <-ctx.Done():
		return true
	default:
		return false
	}
}

// wakeup is a job seen published on the queue's subjects (broker.Published).
type wakeup struct {
	token, jobID string
	kind         broker.Kind
	body         []byte
	// fresh says the loop was idle when it came: it is the news it seems, not one left
	// in the channel while a job ran (whose job may have been canceled or taken since).
	fresh bool
	// replaced says it took the place of an older wake-up not yet taken: that job waits
	// too, and the pick rule, not the order of the publishes, says which runs first.
	replaced bool
	// created is the job's record as its submit in this process creates it
	// (broker.Published.Created), nil when the wake-up did not come from one.
	created func(context.Context) (*broker.Job, uint64, bool)
}

// poke hands an idle loop the newest job published, replacing an older one not yet taken:
// anything published before it is stored by now, where the selection finds it. (A
// submit's own announcement may come before an earlier message is stored; that message's
// copy from NATS comes after it, and wakes the loop for it.)
func (w *Worker) poke(u wakeup) {
	for {
		select {
		case w.wake <- u:
			return
		default:
		}
		select {
		case old := <-w.wake:
			// The same job's second wake-up (its submit's announcement, then NATS's copy)
			// replaces nothing: it keeps its fast path (ADR-0034), and the record its
			// submit creates.
			if old.jobID != u.jobID || old.replaced {
				u.fresh, u.replaced = false, true
			} else if u.created == nil {
				u.created = old.created
			}
		default:
		}
	}
}

// idle waits for a publish, the end of a retry back-off, IdlePoll (or wait, when shorter
// and not 0), or a stop, and returns a job published and not yet fetched, or a wakeup
// with no token.
func (w *Worker) idle(ctx context.Context, wait time.Duration) wakeup {
	d := w.idleFor(time.Now())
	if wait > 0 {
		d = min(d, wait)
	}
	until := time.Now().Add(d)
	t := time.NewTimer(d)
	defer t.Stop()
	w.idling.Store(true)
	defer w.idling.Store(false)
	if hook := w.cfg.onIdle; hook != nil {
		hook(d)
	}
	for {
		select {
		case u := <-w.wake:
			if w.wasFetched(u.jobID) {
				if u.replaced {
					// Stale, but it took the place of another job's wake-up: that job
					// waits, and is looked for now.
					return wakeup{}
				}
				continue // seen while the worker was busy, and run since
			}
			return u
		case <-w.retryNoted:
			// A job put back in the background (an end not stored) after the wait began:
			// ready again with no publish once its back-off ends.
			now := time.Now()
			if next := now.Add(w.idleFor(now)); next.Before(until) {
				until = next
				t.Reset(time.Until(until))
			}
			continue
		case <-t.C:
		case <-w.stopping:
		case <-ctx.Done():
		}
		return wakeup{}
	}
}

// wakeWait bounds the wait for a just-published job to reach its consumer.
const wakeWait = 100 * time.Millisecond

// fetched remembers the ids of jobs taken recently, so a wake-up for one of them is
// known to be stale. The set is small: it is cleared now and then.
func (w *Worker) fetched(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.recent) >= 1024 {
		clear(w.recent)
	}
	w.recent[id] = struct{}{}
}

// unfetched forgets that job id was taken: it was queued again since (a requeue).
func (w *Worker) unfetched(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.recent, id)
}

func (w *Worker) wasFetched(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.recent[id]
	return ok
}

// retryGrace is how long after a back-off ends the loop keeps looking often: the server
// redelivers a NAK-delayed message on its own timer, a little after the delay.
const retryGrace = time.Second

// idleFor is how long to wait for a wake-up: until the next back-off we caused ends, and
// in short steps just after one ended.
func (w *Worker) idleFor(now time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	d := w.cfg.IdlePoll
	kept := w.retries[:0]
	for _, at := range w.retries {
		switch until := at.Sub(now); {
		case until > 0:
			d = min(d, until)
		case until > -retryGrace:
			d = min(d, 10*time.Millisecond)
		default:
			continue // long past: forget it
		}
		kept = append(kept, at)
	}
	w.retries = kept
	return max(d, time.Millisecond)
}

// sleep waits d unless the worker stops (or ctx ends) first; it reports whether d passed.
func (w *Worker) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-w.stopping:
	case <-ctx.Done():
	}
	return false
}

// sleepOrWake is sleep, ended early by a receive from wake (nil: never).
func (w *Worker) sleepOrWake(ctx context.Context, d time.Duration, wake <-chan struct{}) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-wake:
	case <-w.stopping:
	case <-ctx.Done():
	}
}

// next selects and fetches the next job, or returns nil when none is ready; queued tells
// whether the queue held jobs all the same (in retry back-off, or not yet visible to their
// consumer).
func (w *Worker) next(ctx context.Context) (_ *broker.Lease, queued bool, _ error) {
	w.quiet = false
	w.lookBegins()
	now := time.Now()
	heads, err := w.index.refresh(ctx, now)
	first := false
	if err == nil && !w.resumeReadNow() {
		err, first = w.readResumed(ctx, heads), true
	}
	if err == nil && len(heads) > 0 && w.probeFirst(first) {
		// A target not there is waited for before a job is taken, or the job would
		// spend an attempt on it (a hung one holds it for the first-byte timeout), and
		// a job cut short by the last stop its precedence too.
		sctx, scancel := w.untilStop(ctx)
		pctx, cancel := context.WithTimeout(sctx, 10*time.Second)
		perr := w.probeTarget(pctx)
		cancel()
		scancel()
		if w.isStopping(ctx) {
			return nil, false, nil
		}
		// Only a target that is not there (refused, reset, no answer in time, a
		// proxy's 502 or 504 for it) is waited for: one that answers the poll badly (a
		// proxy passing only the model calls) may still run jobs, as it did before the
		// stop.
		if ollama.Unreachable(perr) {
			w.waitTarget(ctx, perr)
			return nil, true, nil // the queue may have changed meanwhile: look again
		}
	}
	if err != nil || len(heads) == 0 {
		w.quiet = err == nil
		return nil, false, err
	}
	look := newOtherRuns() // reads of the other Macs' runs, once per pick
	heads = w.laterKeys(ctx, heads)
	heads = w.waiting(ctx, heads, look)
	w.pruneResume(heads)
	waiting := len(heads)
	if heads = w.runnable(ctx, heads); len(heads) == 0 {
		return nil, false, nil // only other targets' models are queued
	}
	// A job left out here (a model this worker does not run now, Config.Runs) may become
	// its own without a publish: a look that found nothing else is not quiet.
	others := len(heads) < waiting
	w.joinTurns(heads, w.index.lastSeq())
	w.refreshLoaded(ctx, heads)
	w.mu.Lock()
	c := w.choiceLocked(heads, w.serverNow()) // the queue view's simulation starts from the same state
	w.mu.Unlock()
	if w.pastFinishing(ctx, &c); len(c.Heads) == 0 {
		w.quiet = !others
		return nil, false, nil // only jobs this worker is finishing were queued
	}
	var firstErr error
	c.RunElsewhere = w.runElsewhere(ctx, c, look)
	tried, looked := map[string]bool{}, map[string]bool{}
	// drained stays true while every queue tried holds nothing but a job this worker is
	// finishing: then nothing waits, and no recheck is due (Store.NextPast).
	drained := true
	for i, tokens := 0, plan(c); i < len(tokens); i++ {
		token := tokens[i]
		if tried[token] {
			continue
		}
		if w.pastRunElsewhere(ctx, &c, token, looked, look) {
			tokens, i = plan(c), -1 // the order with that queue's waiting job at its head
			continue
		}
		tried[token] = true
		if !broker.TokenValid(token) {
			w.purge(ctx, token)
			drained = false
			continue
		}
		d, err := w.nextOf(ctx, token, c.Heads, &drained)
		err = w.fetchFaulted(d, err)
		if d != nil {
			if err != nil && w.unusable(ctx, d, err) {
				continue
			}
			return d, true, nil
		}
		if err != nil && firstErr == nil {
			// One queue's consumer failing must not starve the others: try them first.
			firstErr = err
		}
	}
	queued = !drained || len(tried) == 0
	w.quiet = !queued && firstErr == nil && !others
	return nil, queued, firstErr
}

// nextOf fetches the next job of queue token without waiting. A queue headed by a job
// this worker is finishing (its ack to come: pastFinishing leaves such a head in place
// for a runner counted loaded, whose fetch delivers the job behind it) is fetched past
// that job (Store.NextPast); any other queue, or one the store does not show drained,
// clears *drained.
func (w *Worker) nextOf(ctx context.Context, token string, heads []head, drained *bool) (*broker.Lease, error) {
	for _, h := range heads {
		if h.Token != token || h.JobID == "" || !w.isFinishing(h.JobID) {
			continue
		}
		d, gone, err := w.store.NextPast(ctx, token, h.Seq)
		if !gone {
			*drained = false
		}
		return d, err
	}
	*drained = false
	return w.store.Next(ctx, token)
}

// waiting replaces each head that waits no more and is older than MaxWait by the next
// message of its queue. Such a head is a job this worker finished, its end still being
// stored in the background (its message stays queued until the ack), or, on a shared
// NATS, a job another foreman's worker runs (its message stays at the head of its queue
// until that run ends; runsElsewhere). Its age would make its class look starved at the
// next pick (a run longer than MaxWait, or one begun late), or another runner of its
// class look starved (the starvation bound: this Mac would swap away from its drain to a
// runner another Mac is draining), and a fresh job of that class would go before a fresh
// one of a higher class. A younger one cannot: it is left, so that the pick after nearly
// every job (whose end is being stored) reads nothing more, and on a shared NATS only a
// head older than MaxWait costs a record read. When none follows, a queue whose head was
// this worker's own is left out; one whose head another Mac runs stays, as one that waits
// nothing (idleHead): should that Mac be gone, its job comes back there after the ack
// wait. The index keeps its heads: the ack marks the queue for a new look. A read that
// fails keeps the head, as before.
func (w *Worker) waiting(ctx context.Context, heads []head, look *otherRuns) []head {
	if w.cfg.MaxWait <= 0 {
		return heads
	}
	now := w.serverNow()
	var out []head // a copy, made only once a head is looked past
	for i, h := range heads {
		noMore, elsewhere := w.waitsNoMore(ctx, h, now, look)
		if !noMore {
			if out != nil {
				out = append(out, h)
			}
			continue
		}
		if out == nil {
			out = append(make([]head, 0, len(heads)), heads[:i]...)
		}
		// A few at most: each other Mac runs one job at a time. A spare copy of the job
		// behind one (an idempotent retry's) is fetched and dropped meanwhile, as before.
		for n := 1; ; n++ {
			p, ok, err := w.store.OldestOfFrom(ctx, h.Token, h.Seq+1)
			if err != nil {
				break
			}
			if !ok {
				if elsewhere {
					h = idleHead(h, now)
				} else {
					h = head{}
				}
				break
			}
			h = headOf(h.Token, p)
			more, other := w.waitsNoMore(ctx, h, now, look)
			if n >= maxLookPast || !more {
				break
			}
			elsewhere = elsewhere || other
		}
		if h.Token != "" {
			out = append(out, h)
		}
	}
	if out == nil {
		return heads
	}
	return out
}

// pastFinishing replaces in c each queue head that is a job this worker is finishing
// (its end stored in the background: its message stays queued until the ack) and whose
// runner is not counted loaded, by the next message of its queue, and leaves out a queue
// with none. The pick right after nearly every job finds that job at its queue's head,
// and waiting looks past it only once it is older than MaxWait. A runner counted loaded
// goes first whatever its age; one that is not (its job's call had keep_alive 0, or got
// no answer of its model) goes by the age of its oldest job, and the finished one's
// would put its next job before an older job of another runner. So only a pick that may
// swap reads one message more.
func (w *Worker) pastFinishing(ctx context.Context, c *choice) {
	var heads []head // a copy, made only once a head is looked past
	for i, h := range c.Heads {
		if h.JobID == "" || slices.Contains(c.Loaded, h.runner()) || !w.isFinishing(h.JobID) {
			continue
		}
		p, ok, err := w.store.OldestOfFrom(ctx, h.Token, h.Seq+1)
		if err != nil {
			continue // the head stands, as a read that fails leaves it
		}
		if heads == nil {
			heads = slices.Clone(c.Heads)
		}
		if ok {
			heads[i] = headOf(h.Token, p)
		} else {
			heads[i] = head{}
		}
	}
	if heads != nil {
		c.Heads = slices.DeleteFunc(heads, func(h head) bool { return h.Token == "" })
	}
}

// idleHead is queue head h, a job another Mac runs with none waiting behind it, as a
// head that waits nothing: not late at now, and the youngest of all. The queue stays in
// the pick, last among the runners not loaded, for its job to be taken should it come
// back (its runner gone, or one that cannot be told: a record from before runners were
// named).
func idleHead(h head, now time.Time) head {
	h.JobID, h.Seq, h.Enqueued = "", math.MaxUint64, now
	return h
}

// otherRuns caches, for one pick, what the reads of the other Macs' runs found: whether
// another live Mac offers a model, and whether a runner (boot id) is present.
type otherRuns struct {
	offered, present map[string]bool
}

func newOtherRuns() *otherRuns {
	return &otherRuns{offered: map[string]bool{}, present: map[string]bool{}}
}

// runElsewhere is, on a shared NATS and once Current ran MaxConsecutive jobs in a row,
// the runners of Current's class besides Current whose queue head is a job another
// foreman's worker runs (choice.RunElsewhere): another Mac drains them, and the cap does
// not swap this Mac to them. One record read per such head; nil otherwise.
func (w *Worker) runElsewhere(ctx context.Context, c choice, look *otherRuns) map[string]bool {
	if c.Current == "" || c.MaxConsecutive <= 0 || c.Consecutive < c.MaxConsecutive {
		return nil
	}
	var out map[string]bool
	for _, h := range c.Heads {
		r := h.runner()
		if r == c.Current || h.Class.Rank() != c.CurrentClass.Rank() || h.JobID == "" || out[r] {
			continue
		}
		if w.runsElsewhere(ctx, h.Token, h.JobID, look) {
			if out == nil {
				out = map[string]bool{}
			}
			out[r] = true
		}
	}
	return out
}

// maxLookPast bounds the messages of one queue a pick looks past (waiting,
// pastRunElsewhere).
const maxLookPast = 4

// pastRunElsewhere is, on a shared NATS, the check before a fetch that would swap: when
// queue token's runner is not loaded here and its head is a job another foreman's worker
// runs (runsElsewhere), the head is replaced in c by the queue's first waiting message
// (or by an idleHead when none follows), and it reports true: the order is to be planned
// again. The head's age made its runner look older than it waits (the other Mac's drain
// of that runner always keeps its oldest job there), and this Mac would swap to that
// runner, which the other Mac already drains, before an older job of a runner nobody
// runs. Each queue is looked at once per pick (looked), so a pick reads at most one
// record per runner it would swap to; a drain of a loaded runner reads nothing.
func (w *Worker) pastRunElsewhere(ctx context.Context, c *choice, token string, looked map[string]bool, look *otherRuns) bool {
	if looked[token] {
		return false
	}
	looked[token] = true
	i := slices.IndexFunc(c.Heads, func(h head) bool { return h.Token == token })
	if i < 0 || c.Heads[i].JobID == "" || slices.Contains(c.Loaded, c.Heads[i].runner()) || !w.runsElsewhere(ctx, token, c.Heads[i].JobID, look) {
		return false
	}
	h := c.Heads[i]
	for n := 1; ; n++ {
		p, ok, err := w.store.OldestOfFrom(ctx, token, h.Seq+1)
		if err != nil {
			return false // the head stands, as a read that fails leaves it
		}
		heads := slices.Clone(c.Heads)
		if !ok {
			heads[i] = idleHead(c.Heads[i], c.Now)
			c.Heads = heads
			return true
		}
		h = headOf(token, p)
		if n >= maxLookPast || h.JobID == "" || !w.runsElsewhere(ctx, token, h.JobID, look) {
			heads[i] = h
			c.Heads = heads
			return true
		}
	}
}

// waitsNoMore reports whether head h, older than MaxWait at now, is no waiting job: one
// this worker is finishing, or one another foreman's worker runs (elsewhere:
// runsElsewhere).
func (w *Worker) waitsNoMore(ctx context.Context, h head, now time.Time, look *otherRuns) (noMore, elsewhere bool) {
	if h.JobID == "" || now.Sub(h.Enqueued) <= w.cfg.MaxWait {
		return false, false
	}
	if w.isFinishing(h.JobID) {
		return true, false
	}
	// A lone foreman, or one on a store of its own, reads nothing more: runs may read the
	// targets (Config.Runs) or a held job's record, as the pick's runnable does once.
	if !w.sharesRuns() || !w.runs(ctx, h.Token) {
		return false, false // left out of the pick (runnable): no read for it
	}
	if w.runsElsewhere(ctx, h.Token, h.JobID, look) {
		return true, true
	}
	return false, false
}

// sharesRuns reports whether another foreman's worker may run this one's jobs: a shared
// NATS (no store of its own) where Config.Elsewhere tells which models others offer.
func (w *Worker) sharesRuns() bool {
	return w.cfg.Elsewhere != nil && !w.store.Config().Exclusive
}

// runsElsewhere reports whether job id of queue token is one another foreman's worker
// runs: on a shared NATS where another live Mac offers the job's model
// (Config.Elsewhere), its record says it runs (loading or working) and that runner is
// present. Its queue message heads its queue, but the job waits no more. A job whose
// runner is gone waits again (its message comes back after the ack wait); a record that
// cannot be read counts as waiting. look caches the answers of the targets and presence
// for the pick; a lone foreman, or one on a store of its own, reads nothing.
func (w *Worker) runsElsewhere(ctx context.Context, token, id string, look *otherRuns) bool {
	if !w.sharesRuns() {
		return false
	}
	model := modelOf(token)
	offered, ok := look.offered[model]
	if !ok {
		offered = model != "" && w.offered(ctx, model)
		look.offered[model] = offered
	}
	if !offered {
		return false
	}
	j, _, err := w.store.Get(ctx, id)
	if err != nil || j.State != broker.StateLoading && j.State != broker.StateWorking {
		return false
	}
	_, boot := j.CurrentRunner()
	if boot == w.store.BootID() {
		return false // not this worker's run now: handed back, waiting to be taken again
	}
	here, ok := look.present[boot]
	if !ok {
		here = !w.store.RunnerGone(ctx, j)
		look.present[boot] = here
	}
	return here
}

// unusable settles a delivery that came with an error, and reports whether it did: a
// message that is no job is removed (ErrUnusable); a job of a kind this foreman does not
// know is left to one that does (unknownKind); for a real one whose stored body could not
// be read, bodyLost decides, and may find the body after all (false: the delivery runs).
func (w *Worker) unusable(ctx context.Context, d *broker.Lease, err error) bool {
	if errors.Is(err, broker.ErrUnusable) {
		w.discard(d, err)
		return true
	}
	if errors.Is(err, broker.ErrUnknownKind) {
		w.unknownKind(ctx, d)
		return true
	}
	return w.bodyLost(ctx, d, err)
}

// runnable keeps the heads whose model this worker runs (Config.Runs), and not those of
// a queue left to another Mac now (leftElsewhere). The queue view simulates from all
// heads; a pick starts from these.
func (w *Worker) runnable(ctx context.Context, heads []head) []head {
	if w.cfg.Runs == nil && !w.holding() {
		return heads
	}
	out := heads[:0:0]
	for _, h := range heads {
		if w.runs(ctx, h.Token) {
			out = append(out, h)
		}
	}
	return out
}

// runs reports whether this worker runs the jobs of queue token (Config.Runs), and runs
// them now: not while the queue holds a job left to another Mac (leftElsewhere).
func (w *Worker) runs(ctx context.Context, token string) bool {
	return !w.leftElsewhere(ctx, token) && w.runsModelOf(ctx, token)
}

// runsModelOf reports whether this worker runs the model of queue token's jobs now
// (Config.Runs).
func (w *Worker) runsModelOf(ctx context.Context, token string) bool {
	if w.cfg.Runs == nil {
		return true
	}
	k, err := broker.ParseQueueKey(token)
	if err != nil {
		return true // purged by the pick
	}
	model, err := broker.ModelFromToken(k.Model)
	if err != nil {
		return true
	}
	return w.cfg.Runs(ctx, model)
}

// serverNow is the NATS server's time (Store.ServerNow), the clock of the queue's
// stamps, on which the picks run.
func (w *Worker) serverNow() time.Time {
	if w.cfg.serverNow != nil {
		return w.cfg.serverNow()
	}
	return w.store.ServerNow()
}

// took gives queue token its turn: its program goes behind the others of its runner and
// class.
func (w *Worker) took(token string) {
	w.mu.Lock() // the queue view reads the turns
	defer w.mu.Unlock()
	w.picks++
	w.served[token] = turnAt(w.picks)
	w.pickedAt = w.serverNow()
	w.classPicked[queueHead(token, broker.QueuedMessage{}).Class.Rank()] = w.pickedAt
}

// joinTurns drops the turns of queues that ran empty and gives a queue seen first (or
// again) its place at the back of the rotation (joinedAt): a new program name never goes
// before a program that waits for its turn. A queue ran empty when no look found it, or
// when none of the jobs it had at the last look is there still (ranOut): its jobs were
// canceled (or run) and new ones queued between two looks, which a look does not see
// empty. lastSeq is the queue's last sequence at this look (queueIndex.lastSeq).
func (w *Worker) joinTurns(heads []head, lastSeq uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	live := make(map[string]bool, len(heads))
	now := make(map[string]uint64, len(heads))
	for _, h := range heads {
		live[h.Token] = true
		now[h.Token] = h.Seq
		if ranOut(w.served, w.picks, w.seen, h.Token, h.Seq) {
			delete(w.served, h.Token)
		}
		if _, ok := w.served[h.Token]; !ok {
			w.served[h.Token] = joinedAt(w.picks)
		}
	}
	for t := range w.served {
		if !live[t] {
			delete(w.served, t)
		}
	}
	w.seen = turnsSeen{lastSeq: lastSeq, heads: now}
}

// turnsSeen is what the last look (joinTurns) saw of the queues, for ranOut: the
// queue's last sequence then and each queue's head then.
type turnsSeen struct {
	lastSeq uint64
	heads   map[string]uint64 // replaced whole at each look, never modified
}

// ranOut reports whether queue token, whose oldest waiting job is message seq now, holds
// none of the jobs it had at the last look (seen) and so forgets its turn: its head is
// newer than the queue's last message then, and is not the head it had then (one read
// after that look's count). served and picks are the turns (choice.Served). The queue
// served last keeps its turn: it goes behind every other already, and its job is being
// written up (its message, still queued, heads it or not, as the write-up goes). So does
// a queue that waits nothing (idleHead). The queue view asks the same.
func ranOut(served map[string]uint64, picks uint64, seen turnsSeen, token string, seq uint64) bool {
	s, ok := served[token]
	if !ok || s == turnAt(picks) || seq == math.MaxUint64 {
		return false
	}
	h, had := seen.heads[token]
	return seq > seen.lastSeq && (!had || seq != h)
}

// refreshLoaded reads /api/ps again when a job ended since the last poll and a job of
// another runner than the last one may run next: that job may have loaded its model and
// unloaded another, or (with several models resident) found its model loaded, and only
// /api/ps tells. Draining one runner costs no reads, unless something went wrong since
// (psDue): a target restarted meanwhile has unloaded the runner run last.
func (w *Worker) refreshLoaded(ctx context.Context, heads []head) {
	inv := w.cfg.Inventory
	if inv == nil {
		return
	}
	w.mu.Lock()
	last, due := w.lastModel, w.psDue
	stale := !inv.Snapshot().LastPoll.After(w.lastEnd)
	w.mu.Unlock()
	if !due && (!stale || !slices.ContainsFunc(heads, func(h head) bool { return h.runner() != last })) {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, psTimeout)
	defer cancel()
	err := inv.Refresh(pctx)
	if err != nil {
		w.log.Debug("refresh loaded models", "err", err)
		if ollama.Unreachable(err) {
			return // read again at the next pick: the target is not there (yet)
		}
	}
	// Read, or answered with an error (a proxy that passes only the model calls): a
	// drain reads no more, or it would read at every pick for good.
	w.mu.Lock()
	w.psDue = false
	w.mu.Unlock()
}

// called records how a job's target call of token's runner went: answered by its model
// (the runner is loaded now), or not (answered reports false: a model the target lacks,
// a load that failed, a target restarted), when nothing is counted loaded before /api/ps
// is read again. An answer to a call with keep_alive 0 (unloads) leaves the runner
// unloaded: nothing is counted loaded before /api/ps is read again, and that runner not
// even then (w.unloaded). A target not there (unreachable) leaves the runner run last as
// it was for the plan (the view's positions, ADR-0028), and the next pick reads /api/ps
// first: the target may come back having restarted empty.
func (w *Worker) called(token string, answered, unloads, unreachable bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case answered && unloads:
		w.lastModel, w.psDue, w.unloaded = "", true, runnerOf(token)
	case answered:
		w.lastModel = runnerOf(token)
		if w.unloaded == w.lastModel {
			w.unloaded = ""
		}
	case unreachable:
		w.psDue = true
	default:
		w.lastModel, w.psDue = "", true
	}
}

// TargetUsedBeside tells the worker that a call beside its jobs reached its target: the
// gateway sends an embedding on an embedding model straight to Ollama (ADR-0013), which
// loads that model if it is not loaded, unloading another when the target keeps no more
// (OLLAMA_MAX_LOADED_MODELS, 1 on a small Mac): the runner run last may be gone. Nothing
// is counted loaded before /api/ps is read again after the call, which the next pick
// does, even in a drain of one runner; an idle worker begins no early call (ADR-0034)
// before it. Without this the next job of the model run last was recorded working, no
// load counted, while Ollama loaded it again.
func (w *Worker) TargetUsedBeside() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lastModel, w.psDue = "", true
	w.lastEnd = time.Now() // a poll from before the call is not trusted
}

// psTimeout bounds the /api/ps read before a pick; without it the pick trusts the last job.
const psTimeout = 2 * time.Second

// loadedLocked is the runners the target has loaded: /api/ps when the inventory polled
// after our last job ended (it may have been used or unloaded meanwhile), each model with
// the load options we last ran it with, the last runner first; else the runner we ran
// last. w.mu must be held.
func (w *Worker) loadedLocked() []string {
	if ps, ok := w.psRunnersLocked(); ok && w.cfg.Inventory.Snapshot().LastPoll.After(w.lastEnd) {
		if i := slices.Index(ps, w.lastModel); i > 0 {
			ps = slices.Insert(slices.Delete(ps, i, i+1), 0, w.lastModel)
		}
		return ps
	}
	if w.lastModel != "" {
		return []string{w.lastModel}
	}
	return nil
}

// viewLoadedLocked is the loaded set the next pick will see, for the queue view, which
// does not read /api/ps itself: the pick reads it again before choosing another runner
// (refreshLoaded), so the view takes the inventory's last /api/ps as the target's
// resident set, with the runner we ran last first (in place of the least recently used
// one when /api/ps, read before that run ended, did not list it yet). An /api/ps read
// after the last run ended stands as it is (loadedLocked): another client of the target
// may have made it swap since. w.mu must be held.
func (w *Worker) viewLoadedLocked() []string {
	ps, ok := w.psRunnersLocked()
	if !ok || len(ps) == 0 || w.cfg.Inventory.Snapshot().LastPoll.After(w.lastEnd) {
		return w.loadedLocked()
	}
	if w.lastModel == "" {
		return ps
	}
	return withLoaded(ps, w.lastModel)
}

// psRunnersLocked is the runners of the inventory's last /api/ps, each model with the
// load options we last ran it with, but the one a call with keep_alive 0 left unloaded
// (w.unloaded, which a poll after the last job's end that does not list it forgets);
// false when there is no usable poll. w.mu must be held.
func (w *Worker) psRunnersLocked() ([]string, bool) {
	inv := w.cfg.Inventory
	if inv == nil {
		return nil, false
	}
	snap := inv.Snapshot()
	if !snap.Polled || snap.Degraded {
		return nil, false
	}
	var out []string
	listed := false
	for _, m := range snap.PsModels() { // the poll just judged: not degraded since
		if t, err := broker.ModelToken(m); err == nil {
			opts, ok := w.runnerOpts[t]
			if !ok {
				opts = broker.DefaultLoadOptions
			}
			if r := broker.RunnerKey(t, opts); r != w.unloaded {
				out = append(out, r)
			} else {
				listed = true
			}
		}
	}
	if w.unloaded != "" && !listed && snap.LastPoll.After(w.lastEnd) {
		w.unloaded = ""
	}
	return out, true
}

// isLoaded reports whether the target has the runner of queue token loaded.
func (w *Worker) isLoaded(ctx context.Context, token string) bool {
	r := runnerOf(token)
	w.refreshLoaded(ctx, []head{{Token: token, Runner: r}})
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Contains(w.loadedLocked(), r)
}

// runnerOf is the runner of queue token's jobs.
func runnerOf(token string) string {
	if k, err := broker.ParseQueueKey(token); err == nil {
		return k.Runner()
	}
	return token
}

// waitStore pauses the worker while the job store refuses writes (a disk that filled up,
// say): every job it took meanwhile would fail its start and spend one of its deliveries,
// and past the delivery limit, with its failed state unstorable too, it would stay in the
// queue for nobody. It probes the store with a write of a record's size
// (Store.ProbeWrite) until one is taken, the store answers otherwise, or the worker stops.
func (w *Worker) waitStore(ctx context.Context, cause error) {
	w.waitUntil(ctx, broker.PauseStoreRefusesWrites, cause, w.store.ProbeWrite, w.refusing, nil,
		"job store refuses writes; worker paused", "job store takes writes again; resuming")
}

// waitTarget pauses the worker after a connection error until the target answers again,
// so the jobs behind do not each burn an attempt on a target that is down. A probe
// answered with an error status is an answer (a proxy passing only the model calls
// answers the polls so for good): only one the target is not there for (refused, reset,
// no answer in time, a proxy's 502 or 504 for it: ollama.Unreachable) keeps the pause.
func (w *Worker) waitTarget(ctx context.Context, cause error) {
	w.mu.Lock()
	// A target that comes back may have restarted empty: the next pick reads /api/ps
	// (a poll after the last job's end stands over the runner run last); meanwhile the
	// plan counts on that runner, as the pick will if the target comes back as it was.
	w.psDue = true
	w.mu.Unlock()
	w.waitUntil(ctx, broker.PauseTargetUnreachable, cause, w.probeTarget, ollama.Unreachable, w.cfg.TargetBack,
		"target unreachable; worker paused", "target is back; resuming")
}

// probeFirst reports whether the target is to be probed before a queued job is taken.
// At the first pick (first) when jobs cut short by the last stop wait (a crash, a power
// loss), or the last poll failed; at any pick while no poll has ended yet (foreman
// quicker than its Ollama, or restarted during an outage: each start would spend an
// attempt) or the inventory's polls say the target is not there (a job queued during an
// outage the worker has not met itself yet). A target whose polls are answered with an
// error status (a proxy passing only the model calls) is not probed at every pick: it
// runs jobs as before, and its polls tell when it stops answering. Without an inventory
// only cut jobs count.
func (w *Worker) probeFirst(first bool) bool {
	if first && w.cutShortWaiting() {
		return true
	}
	if w.cfg.Inventory == nil {
		return false
	}
	snap := w.cfg.Inventory.Snapshot()
	return first && snap.Degraded || snap.LastPoll.IsZero() || !snap.DownSince.IsZero()
}

// probeTarget asks the target for its models (the inventory's poll), or for its version
// without an inventory.
func (w *Worker) probeTarget(ctx context.Context) error {
	var err error
	if w.cfg.Inventory != nil {
		err = w.cfg.Inventory.Refresh(ctx)
	} else {
		_, err = w.cfg.Target.Version(ctx)
	}
	if err != nil && err == ctx.Err() && errors.Is(err, context.DeadlineExceeded) {
		// The probe's bound ended the wait for a poll (a target that takes connections
		// and answers nothing): say so, not a bare "context deadline exceeded" (the
		// pause's error in /queue).
		err = fmt.Errorf("ollama: no answer to the probe of the target in time: %w", err)
	}
	return err
}

// waitUntil pauses the worker for reason, begun by cause: it calls probe (each call
// bounded to 10s and ended by a stop), pausing from RetryDelay up to 30s between calls
// (a pause ended early by a receive from wake), until probe's error is not one down says
// the worker must wait out, or the worker stops.
func (w *Worker) waitUntil(ctx context.Context, reason string, cause error, probe func(context.Context) error,
	down func(error) bool, wake <-chan struct{}, pausedMsg, resumedMsg string) {
	w.pause(reason, cause)
	defer w.resume()
	select {
	case <-wake: // a sign from before this pause (the last one's end, the first poll)
	default:
	}
	delay := w.cfg.RetryDelay
	if w.cfg.probeDelay > 0 {
		delay = w.cfg.probeDelay
	}
	for n := 1; !w.isStopping(ctx); n++ {
		sctx, scancel := w.untilStop(ctx)
		pctx, cancel := context.WithTimeout(sctx, 10*time.Second)
		err := probe(pctx)
		cancel()
		scancel()
		if err == nil || !down(err) {
			if n > 1 {
				w.log.Info(resumedMsg)
			}
			return
		}
		if n == 1 {
			w.log.Warn(pausedMsg, "err", err)
		}
		w.pause(reason, err)
		w.sleepOrWake(ctx, delay, wake)
		delay = min(delay*2, 30*time.Second)
	}
}

// pause records why the worker waits (waitTarget, waitStore), for the queue view, with
// the failure that began the wait and then each probe's. A pause keeps the time it began.
// The wait comes after the job went back to the queue: the view shows it waiting there,
// not running.
//
// A pause for a store fault that only a restart ends (broker.NeedsRestart) says so
// (RestartNeeded), and goes on saying so through probes that got no answer in time: a
// stream with a write error answers none of its failing writes, and a fault check that
// hangs on the disk leaves the store's own fault flag unset meanwhile, so neither says
// the fault went. Only an answer does: a probe that is taken ends the pause, one refused
// otherwise (out of room, say) replaces the cause.
func (w *Worker) pause(reason string, err error) {
	p := broker.NewPause(reason, time.Now(), broker.PauseText(err))
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.paused != nil && w.paused.Reason == reason {
		p.BeganAt(w.paused.Began())
		p.RestartNeeded = w.paused.RestartNeeded && broker.TimedOut(err)
	}
	if reason == broker.PauseStoreRefusesWrites && broker.NeedsRestart(err) {
		p.RestartNeeded = true
	}
	w.paused = p // replaced, never changed: a cached view may hold the one before
	w.running = nil
}

// resume ends a pause.
func (w *Worker) resume() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.paused = nil
}

// Paused says why the worker takes no job now (the target unreachable, the job store
// refusing writes); nil while it runs. The Pause must not be modified.
func (w *Worker) Paused() *broker.Pause {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.paused
}

// PauseShown is the pause as GET /queue and the metrics show it: Paused, and also, while
// the worker is idle and the inventory's polls go unanswered, a pause for the target
// since the first of them: an idle worker pauses only at its next job, yet takes none
// before the target answers a probe. A pause for the target begins no later than that.
// So does an idle worker's store with a fault that only a restart ends (a stream that
// failed a write): no job's start could be stored until foreman restarts, and submits
// are refused for it, so no job may come to pause on; its pause is shown from the fault.
func (w *Worker) PauseShown() *broker.Pause {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pauseShownLocked()
}

func (w *Worker) pauseShownLocked() *broker.Pause {
	p := w.paused // replaced, never changed, once shared
	if p == nil && w.running == nil {
		if fault := w.store.WriteFault(); broker.NeedsRestart(fault) {
			p = broker.NewPause(broker.PauseStoreRefusesWrites, w.store.WriteFaultSince(), broker.PauseText(fault))
			p.RestartNeeded = true
		}
	}
	if w.cfg.Inventory == nil {
		return p
	}
	snap := w.cfg.Inventory.Snapshot()
	switch {
	case snap.DownSince.IsZero() || snap.Err == nil:
		return p
	case p == nil && w.running == nil:
		return broker.NewPause(broker.PauseTargetUnreachable, snap.DownSince, broker.PauseText(snap.Err))
	case p != nil && p.Reason == broker.PauseTargetUnreachable && snap.DownSince.Before(p.Began()):
		c := *p
		c.BeganAt(snap.DownSince)
		return &c
	}
	return p
}
