package worker

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// viewMaxAge is how long a computed queue view is served before it is computed again: a
// status page polling every second and many job lookups then cost one computation. It
// counts from the computation's end, and lasts at least as long as the computation took:
// a deep queue's view (half a second for 50k jobs on a small machine) would otherwise be
// stale as soon as it was made, and every GET /queue or /jobs/{id} would compute its own,
// one after the other; at most half the time then goes into views. Up to viewMaxReuse: a
// view that took long waiting for a store slow to answer is not shown that long.
const (
	viewMaxAge   = 250 * time.Millisecond
	viewMaxReuse = 2 * time.Second
)

// A job another foreman's worker runs keeps its message in the shared queue until it
// ends, at the head of its queue: a queue's consumer hands out its oldest message not
// being run (or backing off) already. The view reads the records of each queue's first
// messages, up to the first one waiting, to tell them apart; at most so many per queue
// and per view, so that a view of many queues, or of a queue with many jobs backing off,
// stays a few reads.
const (
	headReadsPerQueue = 4
	headFirstReads    = 256 // queue heads read per view
	headMoreReads     = 64  // reads behind the heads per view
)

// runningJob is the job the worker runs now, as the view needs it.
type runningJob struct {
	id, model, runner string
	started           time.Time
	// loading is set when the job had to load its runner (a swap).
	loading bool
	// whole is set when the call answers whole (it does not stream): its first byte comes
	// with its end, so no load time can be told from it. Set before the call, read by
	// the job's own goroutine only.
	whole bool
	// working is when the first answer byte came, as time since started plus one (on the
	// monotonic clock, as lastByte: a step of the wall clock is no load time); 0 before.
	working atomic.Int64
	// lastByte is when the last answer frame came, as time since started plus one (on the
	// monotonic clock: a step of the wall clock moves no limit); 0 before the first.
	lastByte atomic.Int64
	// called is set once the target call has returned: the attempt is being concluded.
	called atomic.Bool
}

// gotFrame records the arrival of a frame of the target's answer at now (the first one's
// too, as the answer's start).
func (r *runningJob) gotFrame(now time.Time) {
	if r.working.Load() == 0 {
		r.answered(now)
	}
	r.lastByte.Store(int64(now.Sub(r.started)) + 1)
}

// lastByteAt is when the last answer frame came, zero before the first.
func (r *runningJob) lastByteAt() time.Time {
	if n := r.lastByte.Load(); n != 0 {
		return r.started.Add(time.Duration(n - 1))
	}
	return time.Time{}
}

// answeredAt is when the first answer byte came, zero before.
func (r *runningJob) answeredAt() time.Time {
	if n := r.working.Load(); n != 0 {
		return r.started.Add(time.Duration(n - 1))
	}
	return time.Time{}
}

// QueueView returns the waiting jobs in the order the worker is expected to run them,
// with positions and expected start times, computed with the worker's own pick rule
// (plan) from its current state. A view is reused for a quarter second after it was
// computed (or for as long as it took, viewMaxAge), unless it was computed before
// notBefore. The view is shared: do not modify it.
func (w *Worker) QueueView(ctx context.Context, notBefore time.Time) (*broker.QueueView, error) {
	w.viewMu.Lock()
	defer w.viewMu.Unlock()
	clock := time.Now
	if w.cfg.viewClock != nil {
		clock = w.cfg.viewClock
	}
	now := clock()
	if w.view != nil && now.Before(w.viewUntil) && !w.view.At.Before(notBefore) {
		return w.view, nil
	}
	maxAge := viewMaxAge
	if !notBefore.IsZero() {
		maxAge = 0
	}
	msgs, err := w.backlog.Refresh(ctx, maxAge)
	if err != nil {
		return nil, err
	}
	// This worker's own jobs, taken before the records are read as well as after (in
	// computeView): a record read while its job ran here would show it running on another
	// foreman. One that stops being its own before the view is computed ended: it is done
	// (its message not yet gone from msgs) or handed back to wait; its record, read again,
	// says which, written before the job stopped being its own.
	own := w.ownJobs()
	heads, err := w.headRecords(ctx, msgs)
	if err != nil {
		return nil, err
	}
	for id := range own {
		delete(heads, id)
	}
	if hook := w.cfg.viewAfterHeads; hook != nil {
		hook()
	}
	others := w.othersRun(ctx, msgs)
	for {
		v, ended := w.computeView(msgs, heads, own, others, now)
		if len(ended) == 0 {
			w.markRunnersGone(ctx, v.Elsewhere, heads)
			if ctx.Err() == nil {
				// A presence read cut short by the caller's end says present: the view
				// is this caller's, not one to serve others.
				done := clock()
				w.view, w.viewUntil = v, done.Add(min(max(viewMaxAge, done.Sub(now)), viewMaxReuse))
			}
			return v, nil
		}
		for _, id := range ended {
			delete(own, id)
			j, _, err := w.cfg.Store.Get(ctx, id)
			switch {
			case err == nil:
				heads[id] = j
			case broker.Transient(err) || errors.Is(err, ctx.Err()) && ctx.Err() != nil:
				return nil, err
			}
		}
	}
}

// markRunnersGone marks the jobs running elsewhere whose runner is gone (ADR-0064): a
// read of each runner's presence, once per runner.
func (w *Worker) markRunnersGone(ctx context.Context, jobs []broker.ElsewhereJob, heads map[string]*broker.Job) {
	gone := map[string]bool{}
	for i := range jobs {
		j := heads[jobs[i].JobID]
		if j == nil {
			continue
		}
		_, boot := j.CurrentRunner()
		if boot == "" {
			continue
		}
		g, ok := gone[boot]
		if !ok {
			g = w.store.RunnerGone(ctx, j)
			gone[boot] = g
		}
		jobs[i].RunnerGone = g
	}
}

// othersRun is the queues among msgs whose model this worker does not run now
// (Config.Runs: only other Macs have it, or this Mac is down and another has it). The
// view shows their jobs waiting elsewhere, outside its plan: the worker takes none of
// them, and its own jobs' ETAs count none of their time. A queue it leaves to another
// Mac for a while (ADR-0066) stays in the plan, expected here after that wait.
func (w *Worker) othersRun(ctx context.Context, msgs []broker.QueuedMessage) map[string]bool {
	if w.cfg.Runs == nil {
		return nil
	}
	var out map[string]bool
	asked := map[string]bool{}
	for _, m := range msgs {
		if asked[m.Token] {
			continue
		}
		asked[m.Token] = true
		if !w.runsModelOf(ctx, m.Token) {
			if out == nil {
				out = map[string]bool{}
			}
			out[m.Token] = true
		}
	}
	return out
}

// runnerName is the target name of the foreman that started j's attempt (ADR-0064).
func runnerName(j *broker.Job) string {
	name, _ := j.CurrentRunner()
	return name
}

// ownJobs is the ids of the jobs this worker runs or is finishing.
func (w *Worker) ownJobs() map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	own := make(map[string]bool, len(w.finishing)+1)
	maps.Copy(own, w.finishing)
	if w.running != nil {
		own[w.running.id] = true
	}
	return own
}

// headRecords reads the records of the first messages of each queue in msgs (oldest
// first) that are not waiting: those running (loading, working: here or on another
// foreman) or ended (their result being stored), and those backing off (retrying), up
// to the first waiting one. Every queue's first message is read before any queue's
// second (a job another foreman runs is at the head of its queue), up to headFirstReads;
// then the heads behind them, up to headMoreReads. A record that cannot be decoded
// counts as waiting. It returns the records it read by job id.
func (w *Worker) headRecords(ctx context.Context, msgs []broker.QueuedMessage) (map[string]*broker.Job, error) {
	out := map[string]*broker.Job{}
	reads := map[string]int{}
	done := map[string]bool{} // queues whose first waiting job was met
	read := func(m broker.QueuedMessage) error {
		reads[m.Token]++
		j, _, err := w.cfg.Store.Get(ctx, m.JobID)
		switch {
		case err == nil:
			out[m.JobID] = j
			if j.State == broker.StateQueued {
				done[m.Token] = true
			}
		case broker.Transient(err) || errors.Is(err, ctx.Err()) && ctx.Err() != nil:
			return err
		default: // no record yet (it waits), or one that cannot be read: shown waiting
			done[m.Token] = true
		}
		return nil
	}
	firsts := 0
	for _, m := range msgs {
		if reads[m.Token] > 0 || firsts >= headFirstReads {
			continue
		}
		firsts++
		if err := read(m); err != nil {
			return nil, err
		}
	}
	more := 0
	for _, m := range msgs {
		if more >= headMoreReads {
			break
		}
		if done[m.Token] || reads[m.Token] >= headReadsPerQueue || out[m.JobID] != nil {
			continue
		}
		if reads[m.Token] == 0 {
			continue // past headFirstReads: its head was not read, nor is what is behind it
		}
		more++
		if err := read(m); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// computeView orders msgs (the queue's messages, oldest first) from the worker's state.
// heads are records of the queues' first messages (headRecords): those another foreman
// runs are shown running elsewhere and those that ended are left out, neither waits.
// own are the jobs of this worker's own when heads were read, their records left out:
// those among msgs that are its own no more ended since, and are returned instead of a
// view, for their records to be read again.
func (w *Worker) computeView(msgs []broker.QueuedMessage, heads map[string]*broker.Job, own, others map[string]bool, now time.Time) (*broker.QueueView, []string) {
	// The plan runs on the NATS server's clock, which stamped the messages' Enqueued;
	// now (this host's) measures the running job and the view's age.
	snow := w.serverNow()
	w.mu.Lock()
	c := w.choiceLocked(nil, snow)
	c.Loaded = w.viewLoadedLocked() // what the next pick will see once it read /api/ps
	c.Served = cloneServed(c.Served)
	c.Resume = maps.Clone(c.Resume)
	// Before the first pick has looked for jobs cut short by the last stop, the view
	// finds them as that pick will (readResumed): the queues' heads.
	findCut := !w.resumeRead && w.store.Config().Exclusive
	picks, seen := w.picks, w.seen
	run := w.running // its fields are set before it is shared, but for working (atomic)
	paused := w.pauseShownLocked()
	gone := make(map[string]bool, len(w.finishing)+1)
	maps.Copy(gone, w.finishing)
	var holds map[string]heldOff
	if len(w.held) > 0 {
		holds = maps.Clone(w.held)
	}
	w.mu.Unlock()
	if run != nil {
		gone[run.id] = true
	}
	// The jobs of this worker that wait no more (running, finishing), and below those
	// another Mac runs: the next pick looks past them at its queues' heads only once they
	// are older than MaxWait (waiting).
	noMore := maps.Clone(gone)
	var ended []string
	for _, m := range msgs {
		if own[m.JobID] && !gone[m.JobID] && !slices.Contains(ended, m.JobID) {
			ended = append(ended, m.JobID)
		}
	}
	if len(ended) > 0 {
		return nil, ended
	}
	if findCut && c.Resume == nil {
		c.Resume = map[string]uint64{}
	}
	exclusive := w.store.Config().Exclusive
	var elsewhere []broker.ElsewhereJob
	headed := make(map[string]bool) // queues whose first message was met
	spares := make(map[uint64]bool) // spare copies of jobs cut short
	for _, m := range msgs {
		j := heads[m.JobID]
		first := !headed[m.Token]
		headed[m.Token] = true
		switch {
		case j == nil || gone[m.JobID]:
		case findCut && first && cutShort(j, m.Seq):
			c.Resume[m.Token] = m.Seq
		case exclusive && diedSpare(j, m.Seq):
			// The same, written as waiting by the worker that found it cut short.
			spares[m.Seq] = true
		case exclusive && (j.State == broker.StateLoading || j.State == broker.StateWorking):
			// No other process runs this store's jobs: one whose record says it runs was
			// cut short by the last stop, and waits, once: a spare copy of its message
			// is no job of its own (the worker drops it).
			if j.IsSpare(m.Seq) {
				spares[m.Seq] = true
			}
		case j.State == broker.StateLoading || j.State == broker.StateWorking:
			gone[m.JobID] = true
			if w.sharesRuns() {
				noMore[m.JobID] = true
			}
			if c.RunElsewhere == nil {
				c.RunElsewhere = map[string]bool{}
			}
			c.RunElsewhere[runnerOf(m.Token)] = true // as the pick sees it once capped
			elsewhere = append(elsewhere, broker.ElsewhereJob{
				JobID: m.JobID, Model: m.Model, Kind: m.Kind, Priority: m.Priority, Program: m.Program,
				CreatedAt: m.Enqueued.UTC(), State: j.State, StartedAt: j.StartedAt, Runner: runnerName(j),
			})
		case j.State.Terminal():
			gone[m.JobID] = true // its result is being stored: it waits no more
		}
	}
	// A queue none of whose jobs of the worker's last look is there still forgets its
	// turn at the next pick (joinTurns): the plan rejoins it at the back (order). The
	// pick asks it of the heads it sees, before the jobs that wait no more are left out.
	for token, seq := range turnHeads(msgs, noMore, w.cfg.MaxWait, snow) {
		if ranOut(c.Served, picks, seen, token, seq) {
			delete(c.Served, token)
		}
	}
	if len(gone) > 0 || len(spares) > 0 {
		msgs = slices.DeleteFunc(slices.Clone(msgs), func(m broker.QueuedMessage) bool { return gone[m.JobID] || spares[m.Seq] })
	}
	var waitingElsewhere []broker.QueuedJob
	if len(others) > 0 {
		msgs = slices.DeleteFunc(slices.Clone(msgs), func(m broker.QueuedMessage) bool {
			if !others[m.Token] {
				return false
			}
			waitingElsewhere = append(waitingElsewhere, waitingJob(m, heads[m.JobID]))
			return true
		})
	}

	if run != nil && (!run.called.Load() || !run.answeredAt().IsZero()) {
		// The running job's runner is loaded when it ends, in place of the least recently
		// used one when it was not; not once its call ended unanswered (a model the
		// target lacks loads nothing).
		c.Loaded = withLoaded(c.Loaded, run.runner)
	}
	v := &broker.QueueView{At: now, Loaded: []string{}, Queued: make([]broker.QueuedJob, 0, len(msgs)), Elsewhere: elsewhere,
		WaitingElsewhere: waitingElsewhere, Paused: paused}
	// While the target is not there, what it holds is unknown: the plan still counts on
	// the model run last (the pick prefers it once the target is back), the view names
	// none. A running job does not say otherwise: a target hung as a whole holds its call
	// open until the attempt is given up.
	if inv := w.cfg.Inventory; inv == nil || inv.Snapshot().DownSince.IsZero() {
		for _, r := range c.Loaded {
			if name := runnerModel(r); name != "" && !slices.Contains(v.Loaded, name) {
				v.Loaded = append(v.Loaded, name)
			}
		}
	}
	free := snow
	if run != nil {
		v.Running = run.id
		free = snow.Add(w.remaining(run, now))
	}
	var held map[string]time.Time
	if len(holds) > 0 {
		held = heldQueues(holds, msgs, heads, now, snow)
	}
	for _, p := range order(c, picks, msgs, free, w.times, held) {
		m := p.Msg
		q := waitingJob(m, heads[m.JobID])
		q.QueuePosition, q.ETA = p.Position, ceilSecond(p.Start)
		if held != nil {
			_, q.LeftElsewhere = held[m.Token]
		}
		v.Queued = append(v.Queued, q)
	}
	return v.Indexed(), nil
}

// turnHeads is, by queue, the sequence of the message the worker's next pick sees at the
// queue's head when it gives the turns (joinTurns, after waiting): the queue's first
// message in msgs, or the first after those, up to maxLookPast, whose jobs wait no more
// (noMore: running or finishing here, or run by another Mac) and were queued longer than
// maxWait before now. A younger such job heads its queue at the pick: a program whose
// only job another Mac runs keeps its turn while that job's message is there, even with
// a new job queued since the last look. A queue whose messages are all looked past waits
// nothing, and is left out.
func turnHeads(msgs []broker.QueuedMessage, noMore map[string]bool, maxWait time.Duration, now time.Time) map[string]uint64 {
	out := map[string]uint64{}
	past := map[string]int{}
	for _, m := range msgs {
		if _, ok := out[m.Token]; ok {
			continue
		}
		if maxWait > 0 && noMore[m.JobID] && now.Sub(m.Enqueued) > maxWait && past[m.Token] < maxLookPast {
			past[m.Token]++
			continue
		}
		out[m.Token] = m.Seq
	}
	return out
}

// waitingJob is queue message m's job as the view shows it waiting, with no position
// yet; j is its record when the view read it (a queue's head), which says whether it
// backs off after a failed attempt.
func waitingJob(m broker.QueuedMessage, j *broker.Job) broker.QueuedJob {
	q := broker.QueuedJob{JobID: m.JobID, Model: m.Model, Kind: m.Kind, Priority: m.Priority, Program: m.Program, CreatedAt: m.Enqueued.UTC()}
	if j != nil && j.State == broker.StateRetrying {
		q.State, q.Error = j.State, broker.PauseText(errors.New(j.Error))
		// The error is the last attempt's; one given back uncounted (Ollama busy, not
		// reached, a stop's hand-back) left Attempt at the one before it, which is not
		// the attempt that failed so: none is named.
		if j.RunnerAttempt <= j.Attempt {
			q.Attempts = j.Attempt
		}
	}
	return q
}

// heldQueues is, by queue, when the worker takes the jobs it leaves to another Mac
// (holds, by job id: elsewhere.go) again, on the server's clock (snow at now), for the
// holds that stand as the view sees them: not run out, their job still waiting in msgs
// (neither run nor ended since), and its record, when the view read it (the queue's
// head, where a job backing off stays), still at the attempt given up here. Whether
// another Mac still offers the model is not asked again: the worker's next pick does.
func heldQueues(holds map[string]heldOff, msgs []broker.QueuedMessage, heads map[string]*broker.Job, now, snow time.Time) map[string]time.Time {
	var held map[string]time.Time
	for _, m := range msgs {
		h, ok := holds[m.JobID]
		if !ok || !now.Before(h.until) {
			continue
		}
		if j := heads[m.JobID]; j != nil && !h.waitsFor(j) {
			continue
		}
		until := snow.Add(h.until.Sub(now))
		if held == nil {
			held = map[string]time.Time{}
		}
		if until.After(held[h.token]) {
			held[h.token] = until
		}
	}
	return held
}

// remaining is how long the running job is expected to take still: its model's mean run
// time (plus its load while loading) minus what it already ran, never below 0.
func (w *Worker) remaining(r *runningJob, now time.Time) time.Duration {
	run, load := w.times.estimate(r.model)
	working := r.answeredAt()
	switch {
	case r.loading && working.IsZero():
		return max(load-now.Sub(r.started), 0) + run
	case r.loading:
		return max(run-now.Sub(working), 0)
	default:
		return max(run-now.Sub(r.started), 0)
	}
}

// choiceLocked is the selection's input from the worker's state: the same for the
// worker's own pick and for the view, now on the NATS server's clock (choice.Now). w.mu
// must be held.
func (w *Worker) choiceLocked(heads []head, now time.Time) choice {
	return choice{
		Loaded: w.loadedLocked(), Current: w.current, Consecutive: w.consec, StreakStart: w.streakAt, CurrentClass: w.currentClass, Heads: heads, Served: w.served,
		ClassPicked: w.classPicked, Resume: w.cutJobs, Now: now, MaxConsecutive: w.cfg.MaxConsecutive, MaxWait: w.cfg.MaxWait,
	}
}

// runnerModel is the model name of a runner key ("" for one foreman does not make).
func runnerModel(runner string) string {
	token, _, _ := strings.Cut(runner, ".")
	name, err := broker.ModelFromToken(token)
	if err != nil {
		return ""
	}
	return name
}

// startRunning records the start of a job's attempt for the view and for learning its
// model's durations.
func (w *Worker) startRunning(id, model, token string, state broker.State) *runningJob {
	r := &runningJob{id: id, model: model, runner: runnerOf(token), started: time.Now(), loading: state == broker.StateLoading}
	w.mu.Lock()
	w.running = r
	w.mu.Unlock()
	return r
}

// answered records when the target's first answer byte came.
func (r *runningJob) answered(at time.Time) { r.working.Store(int64(at.Sub(r.started)) + 1) }

// learn feeds a job that ran to its end into its model's durations: the time to its
// first answer byte as the load time of a job that had to load its runner, the rest as
// its run time. A call that answers whole and had to load teaches nothing: its first
// byte is its end.
func (w *Worker) learn(r *runningJob, end time.Time) {
	working := r.answeredAt()
	if r.whole && r.loading {
		return // the load and the run in one: neither is known
	}
	if !r.loading || working.IsZero() {
		w.times.observeRun(r.model, end.Sub(r.started))
		return
	}
	w.times.observeLoad(r.model, working.Sub(r.started))
	w.times.observeRun(r.model, end.Sub(working))
}

// isFinishing reports whether job id's result is being stored in the background.
func (w *Worker) isFinishing(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.finishing[id]
}

// setFinishing marks (or unmarks) a job whose result is stored in the background.
func (w *Worker) setFinishing(id string, on bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if on {
		w.finishing[id] = true
	} else {
		delete(w.finishing, id)
	}
}

// ceilSecond is t in UTC rounded up to the second: an ETA is never before the moment it
// was computed for.
func ceilSecond(t time.Time) time.Time {
	if r := t.Truncate(time.Second); !r.Equal(t) {
		return r.Add(time.Second).UTC()
	}
	return t.UTC()
}
