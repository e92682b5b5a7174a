package worker_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// The pick rule under random workloads, against the real worker, the embedded JetStream
// and the fake Ollama: random submits (three models, the three classes, four programs,
// sync and async), cancels of waiting jobs, cancels of the running job, jobs ending and
// the clock jumping past FOREMAN_MAX_WAIT. The test runs in lock step: every job's call
// is held by the fake until the test ends it, and the background write-up of a finished
// job is held until the next job has started, so the queue the worker picks from is
// exactly the one the test built. A reference model of the README's Scheduling and
// Priorities and programs sections (ADR-0015, ADR-0027 and its amendments) says which
// job must run next; every pick is compared with it. At the end every job has ended
// exactly once, in the state its history calls for, and none ran twice or after a cancel
// while it waited.
//
// The clock of the picks (the NATS server's, Config.serverNow) is frozen by the test and
// moved only between picks, to just past the moment a chosen waiting job becomes older
// than MaxWait: the worker and the model compare the same stamps with the same instant,
// so no outcome depends on timing.
//
// A failure prints the seed and the whole sequence; SCHED_SEED=<n> runs that seed alone.
func TestPickRuleUnderRandomWorkloads(t *testing.T) {
	t.Parallel()
	seeds, steps := seedsFromEnv(t, "SCHED_SEED", 2, 3, 19), 60
	if s := os.Getenv("SCHED_STEPS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("SCHED_STEPS=%q: %v", s, err)
		}
		steps = n
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			t.Parallel()
			runSchedModel(t, seed, steps)
		})
	}
}

const schedMaxWait = time.Hour

var (
	schedModels   = []string{"tiny-a:latest", "tiny-b:latest", "tiny-c:latest"}
	schedClasses  = []broker.Priority{broker.PriorityHigh, broker.PriorityNormal, broker.PriorityLow}
	schedPrograms = []string{"", "p1", "p2", "p3"}
)

// simJob is one job of the random workload.
type simJob struct {
	tag     string
	id      string
	model   string
	class   broker.Priority
	program string
	sync    bool
	numCtx  int       // its num_ctx load option, 0 for none: another runner of its model
	seq     uint64    // its queue message
	enq     time.Time // its queue message's stamp
	// what happened to it
	canceledWaiting, canceledRunning, ran bool
}

// runner is the model with its load options: the unit of the drain.
func (j *simJob) runner() string {
	if j.numCtx == 0 {
		return j.model
	}
	return fmt.Sprintf("%s#%d", j.model, j.numCtx)
}

func (j *simJob) key() string { return j.runner() + "/" + string(j.class.OrNormal()) + "/" + j.program }

func (j *simJob) String() string {
	sync := ""
	if j.sync {
		sync = " sync"
	}
	p := j.program
	if p == "" {
		p = "anon"
	}
	return fmt.Sprintf("%s(%s %s %s%s)", j.tag, strings.TrimSuffix(j.runner(), ":latest"), j.class.OrNormal(), p, sync)
}

// schedRef is the reference model of the pick rule, written from the README and the
// ADRs, with the worker's state the rule reads.
type schedRef struct {
	maxCons int
	maxWait time.Duration
	queues  map[string][]*simJob // waiting jobs by queue (model, class, program), oldest first
	// finished is the job whose end is being stored (its message stays queued until the
	// ack): its queue still counts as one with a head for the turns.
	finished *simJob
	loaded   string // the runner the target has loaded
	current  string // the runner of the jobs run most recently
	consec   int
	// streakAt is when current's streak began (the pick that made it current): another
	// runner's job is passed over only from the later of its stamp and this.
	streakAt time.Time
	curClass broker.Priority
	served   map[string]uint64
	picks    uint64
	picked   [3]time.Time // each class's last pick
	// maxSeq is the newest queue message; seenSeq and seenHeads are it and each queue's
	// head at the last look that found a head: a queue none of whose jobs of then waits
	// (its head now newer than both) forgets its turn.
	maxSeq    uint64
	seenSeq   uint64
	seenHeads map[string]uint64
}

func newSchedRef(maxCons int) *schedRef {
	return &schedRef{maxCons: maxCons, maxWait: schedMaxWait, queues: map[string][]*simJob{}, served: map[string]uint64{}}
}

func (m *schedRef) add(j *simJob) {
	m.queues[j.key()] = append(m.queues[j.key()], j)
	m.maxSeq = max(m.maxSeq, j.seq)
}

func (m *schedRef) remove(j *simJob) {
	k := j.key()
	m.queues[k] = slices.DeleteFunc(m.queues[k], func(x *simJob) bool { return x == j })
	if len(m.queues[k]) == 0 {
		delete(m.queues, k)
	}
}

func (m *schedRef) waiting() []*simJob {
	var out []*simJob
	for _, q := range m.queues {
		out = append(out, q...)
	}
	slices.SortFunc(out, func(a, b *simJob) int { return int(a.seq) - int(b.seq) })
	return out
}

func (m *schedRef) late(j *simJob, now time.Time) bool { return now.Sub(j.enq) > m.maxWait }

// next is the job the rule runs next at now, with why; nil when none waits.
func (m *schedRef) next(now time.Time) (*simJob, string) {
	// Turns: a queue seen for the first time (or again after it ran empty) joins just
	// before the last pick; one that ran empty forgets its turn, and so does one none of
	// whose jobs waiting at the last look waits still (canceled, and others queued since),
	// but the queue served last. A finished job's queue still has its message, unless it
	// is older than MaxWait: the pick looks past that.
	live := map[string]bool{}
	heads := map[string]uint64{}
	for k, q := range m.queues {
		live[k] = true
		heads[k] = q[0].seq
	}
	if f := m.finished; f != nil && !m.late(f, now) {
		live[f.key()] = true
		heads[f.key()] = f.seq
	}
	for k, h := range heads {
		s, ok := m.served[k]
		if ok && s != 2*m.picks && h > m.seenSeq && h != m.seenHeads[k] {
			delete(m.served, k)
		}
	}
	if len(heads) > 0 {
		m.seenSeq, m.seenHeads = m.maxSeq, heads
	}
	for k := range m.served {
		if !live[k] {
			delete(m.served, k)
		}
	}
	for k := range live {
		if _, ok := m.served[k]; !ok {
			m.served[k] = max(2*m.picks, 1) - 1
		}
	}
	if len(m.queues) == 0 {
		return nil, "nothing waits"
	}
	type runnerInClass struct {
		model string
		class int
	}
	oldest := map[runnerInClass]uint64{}
	var late, others, othersLate [3]bool
	streak := m.curClass.Rank()
	for _, q := range m.queues {
		h := q[0]
		k := h.class.Rank()
		rc := runnerInClass{h.runner(), k}
		if o, ok := oldest[rc]; !ok || h.seq < o {
			oldest[rc] = h.seq
		}
		l := m.late(h, now)
		late[k] = late[k] || l
		if k == streak && m.current != "" && h.runner() != m.current {
			others[k] = true
			// Passed over for longer than MaxWait: waited that long since the streak began.
			othersLate[k] = othersLate[k] || l && now.Sub(m.streakAt) > m.maxWait
		}
	}
	// Classes: high, normal, low; a class whose oldest job waited past MaxWait and that
	// had no pick for MaxWait goes before the others.
	var classPos [3]int
	starved := [3]bool{}
	for k := range 3 {
		starved[k] = late[k] && (m.picked[k].IsZero() || now.Sub(m.picked[k]) > m.maxWait)
		classPos[k] = k
		if !starved[k] {
			classPos[k] += 3
		}
	}
	capped := m.consec >= m.maxCons
	type place struct {
		class, group int
		age          uint64
		model        string
		served, seq  uint64
		job          *simJob
	}
	var best *place
	var bestWhy string
	for key, q := range m.queues {
		h := q[0]
		k := h.class.Rank()
		p := place{class: classPos[k], age: oldest[runnerInClass{h.runner(), k}], model: h.runner(), served: m.served[key], seq: h.seq, job: h}
		var why string
		switch {
		case others[k] && capped || othersLate[k]:
			why = "starvation bound (the cap, or another runner's job passed over for MaxWait): the current model goes last"
			if h.runner() == m.current {
				p.group = 1
			}
		case k != streak && late[k]:
			why = "a late job in a class without the streak: runners by age"
		default:
			why = "drain: the loaded model first, then by age"
			if h.runner() == m.loaded {
				p.age = 0
			} else {
				p.group = 1
			}
		}
		if best == nil || cmpPlace(p.class, p.group, p.age, p.model, p.served, p.seq, best.class, best.group, best.age, best.model, best.served, best.seq) < 0 {
			pp := p
			best, bestWhy = &pp, why
		}
	}
	return best.job, fmt.Sprintf("%s; class %s starved=%v", bestWhy, best.job.class.OrNormal(), starved[best.job.class.Rank()])
}

func cmpPlace(c1, g1 int, a1 uint64, m1 string, s1, q1 uint64, c2, g2 int, a2 uint64, m2 string, s2, q2 uint64) int {
	switch {
	case c1 != c2:
		return c1 - c2
	case g1 != g2:
		return g1 - g2
	case a1 != a2:
		if a1 < a2 {
			return -1
		}
		return 1
	case m1 != m2:
		return strings.Compare(m1, m2)
	case s1 != s2:
		if s1 < s2 {
			return -1
		}
		return 1
	case q1 < q2:
		return -1
	case q1 > q2:
		return 1
	}
	return 0
}

// took is the worker taking job j at now.
func (m *schedRef) took(j *simJob, now time.Time) {
	m.remove(j)
	m.picks++
	m.served[j.key()] = 2 * m.picks
	m.picked[j.class.Rank()] = now
	if j.runner() == m.current {
		m.consec++
	} else {
		m.current, m.consec, m.streakAt = j.runner(), 1, now
	}
	m.curClass = j.class.OrNormal()
	m.loaded = j.runner() // the fake loads it before the call is held
}

// schedRun is one seeded run: the bundle, the gates and the log of what happened.
type schedRun struct {
	t      *testing.T
	seed   uint64
	rng    *rand.Rand
	tb     *testBundle
	w      *worker.Worker
	ref    *schedRef
	clock  atomic.Pointer[time.Time]
	starts chan chan struct{}
	jobs   []*simJob
	byTag  map[string]*simJob
	log    []string

	held     map[string]chan struct{} // the held calls' gates by job id
	mu       sync.Mutex
	writeups map[string]chan struct{} // held write-ups by job id
	waitUps  chan struct{}            // a write-up was held
}

func (r *schedRun) logf(format string, args ...any) {
	r.log = append(r.log, fmt.Sprintf(format, args...))
}

func (r *schedRun) fatalf(format string, args ...any) {
	r.t.Helper()
	r.t.Fatalf("seed %d: %s\nsequence:\n  %s", r.seed, fmt.Sprintf(format, args...), strings.Join(r.log, "\n  "))
}

func runSchedModel(t *testing.T, seed uint64, steps int) {
	r := &schedRun{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, 0x5eed)), ref: newSchedRef(3),
		starts: make(chan chan struct{}), byTag: map[string]*simJob{},
		held: map[string]chan struct{}{}, writeups: map[string]chan struct{}{}, waitUps: make(chan struct{}, 1)}
	// free ends the lock step: the hooks hold nothing more (the drain, the test's end).
	free := make(chan struct{})
	var freeOnce sync.Once
	setFree := func() { freeOnce.Do(func() { close(free) }) }
	var models []ollamatest.Model
	for _, m := range schedModels {
		models = append(models, ollamatest.Model{Name: m})
	}
	r.tb = setupFake(t, []ollamatest.Option{ollamatest.WithModels(models...), ollamatest.WithTokens(2),
		ollamatest.WithBeforeChat(func(ctx context.Context, _ string) error {
			gate := make(chan struct{})
			select {
			case r.starts <- gate:
			case <-ctx.Done():
				return ctx.Err()
			case <-free:
				return nil
			}
			select {
			case <-gate:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			case <-free:
				return nil
			}
		})})
	now := time.Now()
	r.clock.Store(&now)
	cfg := worker.Config{MaxConsecutive: r.ref.maxCons, MaxWait: schedMaxWait, Inventory: r.tb.polledInventory(t)}
	cfg = worker.WithServerClock(cfg, func() time.Time { return *r.clock.Load() })
	cfg = worker.WithBeforeStoreDone(cfg, func(id string) {
		ch := make(chan struct{})
		r.mu.Lock()
		r.writeups[id] = ch
		r.mu.Unlock()
		select {
		case r.waitUps <- struct{}{}:
		default: // a wake-up is pending already
		}
		select {
		case <-ch:
		case <-free:
		}
	})
	r.w = r.tb.start(t, cfg)
	t.Cleanup(setFree) // before the worker's stop, which waits for the held calls and write-ups

	var running *simJob   // held in the fake
	var finishing *simJob // its write-up held
	for step := 0; step < steps; step++ {
		if running == nil {
			// Idle: one job, taken as it comes (the pick of one job).
			j := r.submit()
			running = r.awaitStart(nil)
			if running != j {
				r.fatalf("idle worker ran %v, want the one job queued, %v", running, j)
			}
		}
		if finishing != nil {
			r.releaseWriteup(finishing)
			finishing = nil
		}
		// While a job runs: submits, cancels of waiting jobs, the clock.
		for range r.rng.IntN(5) {
			r.submit()
		}
		if w := r.ref.waiting(); len(w) > 0 && r.rng.IntN(4) == 0 {
			r.cancelWaiting(w[r.rng.IntN(len(w))])
		}
		if w := r.ref.waiting(); len(w) > 0 && r.rng.IntN(4) == 0 {
			// Just past the moment j is passed over for MaxWait: waited that long since
			// its stamp, and since the streak began when that is later (a job of another
			// runner than the current breaks the streak then).
			j := w[r.rng.IntN(len(w))]
			from := j.enq
			if r.ref.current != "" && r.ref.streakAt.After(from) {
				from = r.ref.streakAt
			}
			at := from.Add(schedMaxWait + time.Nanosecond)
			if cur := *r.clock.Load(); at.After(cur) {
				r.clock.Store(&at)
				r.logf("clock to just past MaxWait of %v", j)
			}
		}
		// The running job ends: done, or canceled while it runs.
		now := *r.clock.Load()
		if r.rng.IntN(6) == 0 {
			r.cancelRunning(running)
			r.ref.finished = nil
		} else {
			running.ran = true
			r.ref.finished = running
			r.logf("%v ends", running)
			r.release(running)
			finishing = running
		}
		want, why := r.ref.next(now)
		if want == nil {
			if finishing != nil {
				r.releaseWriteup(finishing)
				finishing = nil
			}
			running = nil
			r.logf("nothing waits")
			continue
		}
		got := r.awaitStart(want)
		if got != want {
			r.fatalf("ran %v, want %v (%s); waiting %v", got, want, why, r.ref.waiting())
		}
		running = got
	}
	// The rest runs freely, in any order; the ends are checked below.
	r.logf("drain")
	if running != nil {
		running.ran = true
	}
	setFree()
	r.checkEnds()
}

// submit queues a random job.
func (r *schedRun) submit() *simJob {
	t := r.t
	t.Helper()
	j := &simJob{tag: fmt.Sprintf("j%d", len(r.jobs)), model: schedModels[r.rng.IntN(len(schedModels))],
		class: schedClasses[r.rng.IntN(len(schedClasses))], program: schedPrograms[r.rng.IntN(len(schedPrograms))],
		sync: r.rng.IntN(3) == 0}
	if r.rng.IntN(4) == 0 {
		j.numCtx = 256
	}
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}]`, j.model, j.tag)
	if j.numCtx != 0 {
		body += fmt.Sprintf(`,"options":{"num_ctx":%d}`, j.numCtx)
	}
	body += "}"
	rec, err := r.tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: j.model, Kind: broker.KindChat,
		Priority: j.class, Program: j.program, Sync: j.sync}, []byte(body))
	if err != nil {
		r.fatalf("submit %v: %v", j, err)
	}
	j.id = rec.ID
	// Its queue message: the sequence and stamp the worker's pick reads.
	for from := uint64(0); ; {
		p, ok, err := r.tb.b.Store.Oldest(ctxT(t), from)
		if err != nil || !ok {
			r.fatalf("queue message of %v not found: %v", j, err)
		}
		if p.JobID == j.id {
			j.seq, j.enq = p.Seq, p.Enqueued
			break
		}
		from = p.Seq + 1
	}
	r.jobs = append(r.jobs, j)
	r.byTag[j.tag] = j
	r.ref.add(j)
	r.logf("submit %v seq %d", j, j.seq)
	return j
}

func (r *schedRun) cancelWaiting(j *simJob) {
	if _, err := r.tb.b.Store.Cancel(ctxT(r.t), j.id, "test"); err != nil {
		r.fatalf("cancel waiting %v: %v", j, err)
	}
	j.canceledWaiting = true
	r.ref.remove(j)
	r.logf("cancel waiting %v", j)
}

// cancelRunning cancels the held job and waits until the worker has ended it.
func (r *schedRun) cancelRunning(j *simJob) {
	if _, err := r.tb.b.Store.Cancel(ctxT(r.t), j.id, "test"); err != nil {
		r.fatalf("cancel running %v: %v", j, err)
	}
	j.canceledRunning = true
	r.logf("cancel running %v", j)
	r.tb.waitState(r.t, j.id, broker.StateCanceled)
}

// awaitStart waits for the next job's call to be held by the fake and names it.
func (r *schedRun) awaitStart(want *simJob) *simJob {
	t := r.t
	t.Helper()
	ctx := waitCtx(t)
	var gate chan struct{}
	select {
	case gate = <-r.starts:
	case <-ctx.Done():
		r.fatalf("no job started; want %v", want)
	}
	var tag string
	for _, c := range slices.Backward(r.tb.fake.Calls()) {
		if m := tagRE.FindSubmatch(c.Body); m != nil && !c.Finished {
			tag = string(m[1])
			break
		}
	}
	j := r.byTag[tag]
	if j == nil {
		r.fatalf("a call of no known job started (tag %q)", tag)
	}
	r.held[j.id] = gate
	if j.canceledWaiting {
		r.fatalf("%v ran after it was canceled while it waited", j)
	}
	if j.ran || j.canceledRunning {
		r.fatalf("%v ran twice", j)
	}
	r.ref.took(j, *r.clock.Load())
	r.logf("start %v", j)
	return j
}

func (r *schedRun) release(j *simJob) {
	g, ok := r.held[j.id]
	if !ok {
		r.fatalf("%v holds no call", j)
	}
	delete(r.held, j.id)
	close(g)
}

// releaseWriteup lets job j's held write-up go on and waits until the job's message has
// left the queue (the worker's ack).
func (r *schedRun) releaseWriteup(j *simJob) {
	r.releaseWriteupOf(j)
	eventually(r.t, 30*time.Second, "write-up of "+j.tag+" stored and acked", func() bool {
		return !r.w.Own(j.id)
	})
	r.ref.finished = nil
}

// releaseWriteupOf waits for job j's write-up to be held, then lets it go.
func (r *schedRun) releaseWriteupOf(j *simJob) {
	ctx := waitCtx(r.t)
	for {
		r.mu.Lock()
		ch, ok := r.writeups[j.id]
		if ok {
			delete(r.writeups, j.id)
		}
		r.mu.Unlock()
		if ok {
			close(ch)
			return
		}
		select {
		case <-r.waitUps:
		case <-ctx.Done():
			r.fatalf("no write-up of %v", j)
		}
	}
}

// checkEnds checks that every job ended exactly once, as its history calls for.
func (r *schedRun) checkEnds() {
	t := r.t
	for _, j := range r.jobs {
		want := broker.StateDone
		if j.canceledWaiting || j.canceledRunning {
			want = broker.StateCanceled
		}
		got := r.tb.waitEnded(t, j.id)
		if got.State != want {
			r.fatalf("%v ended %s (%s), want %s", j, got.State, got.Error, want)
		}
		terminal := 0
		for _, s := range statesOf(t, r.tb, j.id) {
			if s.Terminal() {
				terminal++
			}
		}
		if terminal != 1 {
			r.fatalf("%v: %d terminal states in its history, want 1", j, terminal)
		}
	}
	calls := map[string]int{}
	for _, c := range r.tb.fake.Calls() {
		if m := tagRE.FindSubmatch(c.Body); m != nil {
			calls[string(m[1])]++
		}
	}
	for _, j := range r.jobs {
		n := calls[j.tag]
		switch {
		case j.canceledWaiting && n != 0:
			r.fatalf("%v canceled while waiting reached the target %d times", j, n)
		case !j.canceledWaiting && n != 1:
			r.fatalf("%v reached the target %d times, want once", j, n)
		}
	}
	r.tb.waitQueueEmpty(t)
}
