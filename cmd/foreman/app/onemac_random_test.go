package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// One foreman on its embedded NATS server, as `foreman serve` runs it (the worker's early
// call and its skipped look after a job at an idle worker on: ADR-0034, ADR-0137), under
// seeded random, free-running workloads: async POST /jobs, NATS submits, sync chats and
// generates (some streamed, some whose caller hangs up) over three models, three programs
// and the three classes, in bursts, at an idle worker and right as a job ends; the target
// failing some calls with a retryable error (a dead runner, "busy", a dropped connection)
// and some with a final one, models held for a while, cancels of waiting and of running
// jobs. The workload goes in spells, each followed by a settle with nothing published:
// the worker's idle wait is an hour (IdlePoll), so a job it does not look for (a look
// skipped that could miss it, a back-off forgotten) waits in the queue for good there,
// not for a second. Every job ends, exactly once, in a state its calls to the target and
// its cancel allow; every sync caller is answered; GET /queue lists nothing after each
// settle.
//
// A failure prints the seed, the steps, the jobs not ended with their stages and records,
// and the worker's state (GET /queue, its loop's stack, the log's tail). ONEMAC_SEED=<n>
// runs that seed alone, ONEMAC_SEED=<from>-<to> a range; ONEMAC_OPS=<n> sets the steps;
// ONEMAC_STEPS=1 prints the steps of a seed that passes too.
func TestOneMacUnderRandomWorkloads(t *testing.T) {
	seeds, ops := []uint64{1, 2, 3}, 60
	if s := os.Getenv("ONEMAC_SEED"); s != "" {
		from, to, _ := strings.Cut(s, "-")
		a, err := strconv.ParseUint(from, 10, 64)
		b := a
		if err == nil && to != "" {
			b, err = strconv.ParseUint(to, 10, 64)
		}
		if err != nil {
			t.Fatalf("ONEMAC_SEED=%q: %v", s, err)
		}
		seeds = nil
		for n := a; n <= b; n++ {
			seeds = append(seeds, n)
		}
	}
	if s := os.Getenv("ONEMAC_OPS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("ONEMAC_OPS=%q: %v", s, err)
		}
		ops = n
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { oneMacRandom(t, seed, ops) })
	}
}

// stageLog keeps the stages each job's run reached (worker.Config.Trace), with when.
type stageLog struct {
	mu     sync.Mutex
	t0     time.Time
	stages map[string][]string
	first  map[string]time.Time // the job's first fetch
}

func newStageLog() *stageLog {
	return &stageLog{t0: time.Now(), stages: map[string][]string{}, first: map[string]time.Time{}}
}

func (s *stageLog) trace(id, stage string) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stages[id] = append(s.stages[id], fmt.Sprintf("%s@%v", stage, now.Sub(s.t0).Round(time.Millisecond)))
	if _, ok := s.first[id]; !ok && stage == worker.StageFetched {
		s.first[id] = now
	}
}

func (s *stageLog) of(id string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.stages[id])
}

func (s *stageLog) fetchedAt(id string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.first[id]
	return at, ok
}

// logTail keeps the last lines foreman logged.
type logTail struct {
	mu    sync.Mutex
	lines []string
}

func (l *logTail) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.TrimRight(string(p), "\n"))
	if len(l.lines) > 400 {
		l.lines = slices.Delete(l.lines, 0, len(l.lines)-300)
	}
	return len(p), nil
}

func (l *logTail) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines[max(0, len(l.lines)-n):], "\n")
}

// workerStack is the stack of the worker's loop (worker.(*Worker).Run): where it waits.
func workerStack() string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "worker.(*Worker).Run(") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// oneMacJob is a job the workload submitted (or a sync call made).
type oneMacJob struct {
	id, prompt, how string
	submitted       time.Time
	cancel          int  // the answer to its DELETE, 0 when none
	hungUp          bool // a sync job whose caller left before its answer
}

func oneMacRandom(t *testing.T, seed uint64, ops int) {
	rng := rand.New(rand.NewPCG(seed, 0x1d1e))
	var stepsMu sync.Mutex
	var steps []string
	t0 := time.Now()
	step := func(format string, args ...any) {
		stepsMu.Lock()
		defer stepsMu.Unlock()
		steps = append(steps, fmt.Sprintf("%v ", time.Since(t0).Round(time.Millisecond))+fmt.Sprintf(format, args...))
	}
	defer func() {
		if t.Failed() || os.Getenv("ONEMAC_STEPS") != "" {
			stepsMu.Lock()
			defer stepsMu.Unlock()
			t.Logf("seed %d (ONEMAC_SEED=%d), steps:\n%s", seed, seed, strings.Join(steps, "\n"))
		}
	}()

	const tokens, tokenDelay = 4, 3 * time.Millisecond
	models := []string{"alpha", "beta", "gamma"}
	fake := ollamatest.New(t, ollamatest.WithLoadDelay(5*time.Millisecond), ollamatest.WithTokenDelay(tokenDelay), ollamatest.WithTokens(tokens),
		ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}, ollamatest.Model{Name: "beta:latest"}, ollamatest.Model{Name: "gamma:latest"}))
	stages := newStageLog()
	logs := &logTail{}
	var early, adjusted bool
	cfg := app.Config{
		Addr: "127.0.0.1:0", DataDir: t.TempDir(), OllamaURL: fake.URL, TargetName: "studio",
		PollInterval: 200 * time.Millisecond, MaxAttempts: 3,
		Components: app.Components{Worker: func(c *worker.Config) {
			adjusted, early = true, c.EarlyCall
			// A job not looked for waits for IdlePoll (a second in foreman serve): an hour
			// makes it wait for good, where the end of the test sees it.
			c.IdlePoll = time.Hour
			c.RetryDelay = 100 * time.Millisecond // the back-off of a retry (longer than the loop's rechecks), and of "busy"
			c.Trace = stages.trace
		}},
	}
	a, err := app.Start(context.Background(), cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopForeman(t, a) })
	if !adjusted || !early {
		t.Fatalf("the worker on the embedded server runs without its early call (EarlyCall %v): the skipped look is not tested", early)
	}
	ends := watchEndsOn(t, a.Conn())
	waitTargets(t, a, 1)

	var (
		mu          sync.Mutex
		pendingSync atomic.Int32 // sync calls not answered yet
		jobs        []*oneMacJob
		byID        = map[string]*oneMacJob{}
		syncWG      sync.WaitGroup
		releases    []func()
	)
	addJob := func(j *oneMacJob) {
		mu.Lock()
		defer mu.Unlock()
		jobs = append(jobs, j)
		if j.id != "" {
			if old := byID[j.id]; old != nil && j.cancel == 0 {
				j.cancel = old.cancel // a sync job canceled before its caller had its id
			}
			byID[j.id] = j
		}
	}
	defer func() {
		for _, r := range releases {
			r()
		}
	}()
	t.Cleanup(syncWG.Wait) // after a failure too: the calls report to t

	prios := []string{"high", "normal", "low"}
	progs := []string{"ann", "bob", "cy"}
	failures := []struct {
		name string
		f    ollamatest.Failure
	}{
		{"runner died (retried)", ollamatest.FailStatus(500, "llama runner process has terminated: exit status 2")},
		{"busy (retried)", ollamatest.FailStatus(503, "server busy, please try again.  maximum pending requests exceeded")},
		{"dropped (retried)", ollamatest.DropConnection},
		{"bad request (final)", ollamatest.FailStatus(400, "fake: bad request")},
	}
	// settle waits, after a spell or the workload, for every sync caller's answer and
	// every job's end, then for GET /queue to list none: nothing else is published
	// meanwhile, so a job the worker does not look for waits there for good. A job not
	// ended within is reported, with the worker's state.
	settle := func(what string) bool {
		const within = 45 * time.Second
		deadline := time.Now().Add(within)
		var left []*oneMacJob
		pollFor(within, func() bool {
			left = left[:0]
			mu.Lock()
			defer mu.Unlock()
			for _, j := range jobs {
				if _, n := ends.ended(j.id); j.id != "" && n == 0 {
					left = append(left, j)
				}
			}
			return len(left) == 0 && pendingSync.Load() == 0
		})
		var ids []string
		if len(left) == 0 && pendingSync.Load() == 0 &&
			pollFor(time.Until(deadline), func() bool { ids = queueIDs(t, a); return len(ids) == 0 }) {
			return true
		}
		for _, j := range left {
			rec, _, err := a.Store().Get(context.Background(), j.id)
			state := "?"
			if err == nil {
				state = fmt.Sprintf("%s (attempt %d, error %q)", rec.State, rec.Attempt, rec.Error)
			}
			t.Errorf("seed %d: job %s (%s, %s, submitted at %v) not ended %v after %s: record %s, stages %v, calls %s",
				seed, j.id, j.how, j.prompt, j.submitted.Sub(t0).Round(time.Millisecond), within, what, state, stages.of(j.id), callsOf(fake, j.prompt))
		}
		if n := pendingSync.Load(); n > 0 {
			t.Errorf("seed %d: %d sync callers not answered %v after %s", seed, n, within, what)
		}
		if len(ids) == 0 {
			ids = queueIDs(t, a)
		}
		for _, id := range ids {
			// Jobs of sync callers not answered yet are known by GET /queue only.
			rec, _, err := a.Store().Get(context.Background(), id)
			state := "?"
			if err == nil {
				state = fmt.Sprintf("%s (%s %s, attempt %d, error %q)", rec.State, rec.Kind, rec.Model, rec.Attempt, rec.Error)
			}
			t.Errorf("seed %d: GET /queue lists %s %v after %s: record %s, stages %v", seed, id, within, what, state, stages.of(id))
		}
		_, q := call(t, a, http.MethodGet, "/queue?limit=1000", "")
		t.Errorf("seed %d: the worker's state: target calls in flight %d; GET /queue: %s\nits loop:\n%s\nlog tail:\n%s",
			seed, fake.InFlight(), q, workerStack(), logs.tail(60))
		return false
	}
	// The workload goes in spells: calm ones, only submits (mostly at an idle worker,
	// or as a job ends), where the worker skips its look after most jobs (a failure or
	// a cancel has it look for a while: a back-off noted, a job published and never
	// fetched), and stormy ones with everything.
	calm, spell := false, 0
	for i := range ops {
		if spell == 0 {
			if i > 0 {
				for _, r := range releases {
					r()
				}
				step("%d: settle", i)
				if !settle("a spell") {
					return
				}
			}
			calm, spell = rng.IntN(2) == 0, 5+rng.IntN(15)
			step("%d: a %s spell of %d steps", i, map[bool]string{true: "calm", false: "stormy"}[calm], spell)
		}
		spell--
		// The gap before the step: none (a burst), a short one (the worker may be
		// running or finishing a job), a long one (it goes idle), or until the call in
		// flight ends (the step meets the worker as it finishes a job).
		g := rng.IntN(10)
		if calm {
			g = 3 + rng.IntN(7)
		}
		switch {
		case g < 3:
		case g < 6 && !calm:
			<-time.After(time.Duration(1+rng.IntN(15)) * time.Millisecond)
		case g < 9:
			<-time.After(time.Duration(30+rng.IntN(120)) * time.Millisecond)
		default:
			if fake.InFlight() > 0 {
				before := finishedCalls(fake.Calls())
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = fake.WaitFor(ctx, func(calls []ollamatest.Call) bool { return finishedCalls(calls) > before })
				cancel()
				step("%d: at a call's end", i)
			}
		}
		m := models[rng.IntN(len(models))]
		prio, prog := prios[rng.IntN(3)], progs[rng.IntN(3)]
		kind := []string{"chat", "generate"}[rng.IntN(2)]
		prompt := fmt.Sprintf("s%d-op%d", seed, i)
		content := fmt.Sprintf(`"messages":[{"role":"user","content":%q}]`, prompt)
		if kind == "generate" {
			content = fmt.Sprintf(`"prompt":%q`, prompt)
		}
		r := rng.IntN(100)
		if calm {
			r = rng.IntN(55)
		}
		switch {
		case r < 35: // async
			code, b := call(t, a, http.MethodPost, "/jobs",
				fmt.Sprintf(`{"kind":%q,"model":%q,"priority":%q,"program":%q,%s}`, kind, m, prio, prog, content))
			if code != http.StatusAccepted {
				t.Fatalf("submit %s: %d %s", prompt, code, b)
			}
			var j struct {
				ID string `json:"job_id"`
			}
			_ = json.Unmarshal(b, &j)
			addJob(&oneMacJob{id: j.ID, prompt: prompt, how: "async " + kind, submitted: time.Now()})
			step("%d: submit %s %s %s %s %s (%s)", i, j.ID, kind, m, prio, prog, prompt)
		case r < 40: // NATS
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			msg, err := a.Conn().RequestWithContext(ctx, broker.SubmitSubject,
				fmt.Appendf(nil, `{"kind":%q,"model":%q,"priority":%q,"program":%q,%s}`, kind, m, prio, prog, content))
			cancel()
			if err != nil {
				t.Fatalf("NATS submit %s: %v", prompt, err)
			}
			var rep broker.SubmitReply
			if err := json.Unmarshal(msg.Data, &rep); err != nil || rep.JobID == "" {
				t.Fatalf("NATS submit %s: %s (%v)", prompt, msg.Data, err)
			}
			addJob(&oneMacJob{id: rep.JobID, prompt: prompt, how: "nats " + kind, submitted: time.Now()})
			step("%d: NATS submit %s %s %s %s %s (%s)", i, rep.JobID, kind, m, prio, prog, prompt)
		case r < 55: // sync, its caller now and then hanging up before its answer
			stream := rng.IntN(2) == 0
			path := "/api/chat"
			if kind == "generate" {
				path = "/api/generate"
			}
			body := fmt.Sprintf(`{"model":%q,"stream":%v,%s}`, m, stream, content)
			var hangUp time.Duration
			if !calm && rng.IntN(4) == 0 {
				hangUp = time.Duration(5+rng.IntN(150)) * time.Millisecond
			}
			j := &oneMacJob{prompt: prompt, how: fmt.Sprintf("sync %s stream %v hang-up %v", kind, stream, hangUp), submitted: time.Now(), hungUp: hangUp > 0}
			step("%d: sync %s %s stream %v %s %s hang-up %v (%s)", i, path, m, stream, prio, prog, hangUp, prompt)
			syncWG.Add(1)
			pendingSync.Add(1)
			go func() {
				defer syncWG.Done()
				defer pendingSync.Add(-1)
				defer addJob(j)
				within := 60 * time.Second
				if hangUp > 0 {
					within = hangUp
				}
				ctx, cancel := context.WithTimeout(context.Background(), within)
				defer cancel()
				// The job's id, from the 103 before the answer: told on the connection's
				// goroutine, which a caller hanging up does not wait for.
				var early atomic.Pointer[string]
				ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
					if id := h.Get(gateway.HeaderJobID); id != "" {
						early.Store(&id)
					}
					return nil
				}})
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+a.Addr()+path, strings.NewReader(body))
				req.Header.Set(gateway.HeaderPriority, prio)
				req.Header.Set(gateway.HeaderProgram, prog)
				req.Header.Set(gateway.HeaderEarlyJobID, "1")
				resp, err := http.DefaultClient.Do(req)
				if id := early.Load(); id != nil {
					j.id = *id
				}
				if err != nil {
					step("sync %s (%s): %v", prompt, j.id, err)
					if hangUp == 0 {
						t.Errorf("seed %d: sync %s (%s, job %q): no answer: %v", seed, path, prompt, j.id, err)
					}
					return
				}
				if id := resp.Header.Get(gateway.HeaderJobID); id != "" {
					j.id = id
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				step("sync %s (%s) answered %d: %.120s %v", prompt, j.id, resp.StatusCode, b, err)
				if err != nil && hangUp == 0 {
					t.Errorf("seed %d: sync %s (%s, job %s): answer cut: %v", seed, path, prompt, j.id, err)
				}
				if j.id == "" {
					t.Errorf("seed %d: sync %s (%s): %d without a job id: %s", seed, path, prompt, resp.StatusCode, b)
				}
			}()
		case r < 70: // a failure of the next call
			f := failures[rng.IntN(len(failures))]
			fake.FailNext(1, f.f)
			step("%d: the next call fails: %s", i, f.name)
			if rng.IntN(2) == 0 {
				// The spell ends soon: the settle after it meets the job backing off
				// with nothing else published.
				spell = min(spell, 1+rng.IntN(2))
			}
		case r < 76: // a model held for a while
			release := fake.Hold(m)
			releases = append(releases, release)
			d := time.Duration(20+rng.IntN(300)) * time.Millisecond
			time.AfterFunc(d, release)
			step("%d: %s held for %v", i, m, d)
		case r < 90: // a cancel: the running job, a waiting one, or one just submitted
			var id string
			switch c := rng.IntN(3); {
			case c == 0:
				id = runningID(t, a)
			case c == 1:
				if ids := queueIDs(t, a); len(ids) > 0 {
					id = ids[rng.IntN(len(ids))]
				}
			default:
				mu.Lock()
				if len(jobs) > 0 {
					id = jobs[len(jobs)-1].id
				}
				mu.Unlock()
			}
			if id == "" {
				step("%d: nothing to cancel", i)
				continue
			}
			code, b := call(t, a, http.MethodDelete, "/jobs/"+id, "")
			step("%d: cancel %s: %d", i, id, code)
			if code != http.StatusOK && code != http.StatusAccepted && code != http.StatusConflict {
				t.Errorf("cancel %s: %d %s", id, code, b)
			}
			mu.Lock()
			if j := byID[id]; j != nil && j.cancel == 0 {
				j.cancel = code
			} else if j == nil {
				// A sync job, whose caller learns its id only with the answer.
				byID[id] = &oneMacJob{id: id, cancel: code}
			}
			mu.Unlock()
		default:
			step("%d: GET /queue: %v", i, queueIDs(t, a))
		}
	}
	for _, r := range releases {
		r()
	}
	step("workload over")
	if !settle("the workload") {
		return
	}
	syncWG.Wait()
	mu.Lock()
	all := slices.Clone(jobs)
	cancels := map[string]int{}
	for id, j := range byID {
		cancels[id] = j.cancel
	}
	mu.Unlock()
	for _, j := range all {
		if c := cancels[j.id]; c != 0 {
			j.cancel = c
		}
	}

	// Each ended exactly once, as its record says, in a state its calls and cancel allow.
	var slowest time.Duration
	var slowestJob string
	calls := fake.Calls()
	for _, j := range all {
		if j.id == "" {
			continue
		}
		final, n := ends.ended(j.id)
		if n != 1 {
			t.Errorf("seed %d: job %s (%s) ended %d times", seed, j.id, j.how, n)
		}
		rec, _, err := a.Store().Get(context.Background(), j.id)
		if err != nil {
			t.Errorf("seed %d: job %s: %v", seed, j.id, err)
			continue
		}
		if rec.State != final {
			t.Errorf("seed %d: job %s: record %s, its end event %s", seed, j.id, rec.State, final)
		}
		if want := allowedEnd(j, calls); !slices.Contains(want, rec.State) {
			t.Errorf("seed %d: job %s (%s, %s, cancel %d) ended %s (%q), its history allows %v; calls %s",
				seed, j.id, j.how, j.prompt, j.cancel, rec.State, rec.Error, want, callsOf(fake, j.prompt))
		}
		if at, ok := stages.fetchedAt(j.id); ok && at.Sub(j.submitted) > slowest {
			slowest, slowestJob = at.Sub(j.submitted), j.id
		}
	}
	inference, faulted := 0, 0
	for _, c := range calls {
		if c.Path == "/api/chat" || c.Path == "/api/generate" {
			inference++
			if c.Failure != "" {
				faulted++
			}
		}
	}
	t.Logf("seed %d: %d jobs, %d calls of the target (%d failed by it), longest wait for a first fetch %v (%s)",
		seed, len(all), inference, faulted, slowest.Round(time.Millisecond), slowestJob)
}

// allowedEnd is the end the calls of j's prompt and its cancel allow: canceled for a
// cancel answered 200; else the end of its last call (done for one not failed, failed for
// one the fake failed: a final error, or a retryable one on the last attempt), or
// canceled for a job whose cancel was answered 202 or whose sync caller hung up.
func allowedEnd(j *oneMacJob, calls []ollamatest.Call) []broker.State {
	if j.cancel == http.StatusOK {
		return []broker.State{broker.StateCanceled}
	}
	var left []broker.State
	if j.hungUp || j.cancel == http.StatusAccepted {
		// Its caller gone, or its cancel requested but not seen to take effect within
		// the DELETE's wait (a busy machine): a call that ended first ends it as well.
		left = []broker.State{broker.StateCanceled}
	}
	var last *ollamatest.Call
	for i := range calls {
		if strings.Contains(string(calls[i].Body), `"`+j.prompt+`"`) && (last == nil || calls[i].Started.After(last.Started)) {
			last = &calls[i]
		}
	}
	switch {
	case last == nil:
		return left // never run
	case last.Failure != "":
		return append(left, broker.StateFailed)
	default:
		return append(left, broker.StateDone)
	}
}

func finishedCalls(calls []ollamatest.Call) int {
	n := 0
	for _, c := range calls {
		if c.Finished {
			n++
		}
	}
	return n
}

// callsOf describes the fake's calls of prompt.
func callsOf(fake *ollamatest.Server, prompt string) string {
	var out []string
	for _, c := range fake.Calls() {
		if strings.Contains(string(c.Body), `"`+prompt+`"`) {
			out = append(out, fmt.Sprintf("{%s %s finished %v canceled %v failure %q}", c.Path, c.Model, c.Finished, c.Canceled, c.Failure))
		}
	}
	return "[" + strings.Join(out, " ") + "]"
}

// runningID is the job GET /queue of a shows running, "" for none.
func runningID(t *testing.T, a *app.App) string {
	t.Helper()
	if q := queueOf(t, a, 1); q.Running != nil {
		return q.Running.ID
	}
	return ""
}
