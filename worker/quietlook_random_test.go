package worker_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// The look after a job at an idle worker is skipped only when it cannot miss a job
// (ADR-0137): under seeded random workloads with the faults that make a job ready without
// a publish, which only this package's hooks inject: ends the store does not take (the
// job put back in the background, while the loop idles or runs the next job), ends and
// starts stored late, and a model the worker does not run for a while (Config.Runs); with
// attempts cut off by the target and jobs submitted at an idle worker, in bursts and as
// a job ends. IdlePoll is an hour: after each spell, with nothing more published (but one
// job once the model is run again: Runs changes with no publish, and the next look finds
// its jobs), every job must end and the queue be empty, or a job waits there for good.
//
// A failure prints the seed, the steps, the jobs not ended and the worker's loop.
// QUIETLOOK_SEED=<n> or <from>-<to> runs other seeds.
func TestTheSkippedLookUnderRandomFaults(t *testing.T) {
	t.Parallel()
	seeds := seedsFromEnv(t, "QUIETLOOK_SEED", 1, 2)
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { skippedLookRandom(t, seed) })
	}
}

func skippedLookRandom(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x100c))
	var stepsMu sync.Mutex
	var steps []string
	t0 := time.Now()
	step := func(format string, args ...any) {
		stepsMu.Lock()
		defer stepsMu.Unlock()
		steps = append(steps, fmt.Sprintf("%v ", time.Since(t0).Round(time.Millisecond))+fmt.Sprintf(format, args...))
	}
	defer func() {
		if t.Failed() || os.Getenv("QUIETLOOK_STEPS") != "" {
			stepsMu.Lock()
			defer stepsMu.Unlock()
			t.Logf("seed %d (QUIETLOOK_SEED=%d), steps:\n%s", seed, seed, strings.Join(steps, "\n"))
		}
	}()

	tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokenDelay(2 * time.Millisecond), ollamatest.WithTokens(3)})
	// The hooks draw from their own generator: they run on the worker's goroutines.
	var hookMu sync.Mutex
	hookRng := rand.New(rand.NewPCG(seed, 0x400c))
	draw := func(n int) int {
		hookMu.Lock()
		defer hookMu.Unlock()
		return hookRng.IntN(n)
	}
	late := func(what, id string) {
		if draw(3) == 0 {
			d := time.Duration(1+draw(60)) * time.Millisecond
			step("%s of %s late by %v", what, id, d)
			<-time.After(d) // the store's slowness: part of the workload
		}
	}
	var runsB atomic.Bool
	runsB.Store(true)
	cfg := worker.Config{EarlyCall: true, IdlePoll: time.Hour, RetryDelay: 30 * time.Millisecond,
		Runs: func(_ context.Context, model string) bool { return !strings.HasPrefix(model, "tiny-b") || runsB.Load() }}
	cfg = worker.WithMaxAttempts(cfg, 1000) // ends not stored may come many times to one job
	// faults are the tries to store each job's end that fail, decided at its submit.
	var faultMu sync.Mutex
	faults := map[string]int{}
	var lastFault time.Time
	cfg = worker.WithEndFault(cfg, func(id string, state broker.State) error {
		faultMu.Lock()
		defer faultMu.Unlock()
		if faults[id] > 0 {
			faults[id]--
			lastFault = time.Now()
			step("the end (%s) of %s not stored", state, id)
			return errors.New("test: the store takes no end of this job")
		}
		return nil
	})
	cfg = worker.WithBeforeStoreDone(cfg, func(id string) { late("the end", id) })
	cfg = worker.WithBeforeStart(cfg, func(id string) { late("the start", id) })
	tb.start(t, cfg)

	var jobs []string
	submitFaulted := func(model string, i, n int) {
		j := &broker.Job{ID: broker.NewID(), Model: model, Kind: broker.KindChat}
		faultMu.Lock()
		faults[j.ID] = n
		faultMu.Unlock()
		if _, err := tb.b.Store.Submit(ctxT(t), j, []byte(chatBody(model, i))); err != nil {
			t.Fatalf("submit: %v", err)
		}
		jobs = append(jobs, j.ID)
		step("%d: submit %s %s, its end not stored %d times", i, j.ID, model, n)
	}
	submit := func(model string, i int) {
		n := 0
		if rng.IntN(10) == 0 {
			n = 1 + rng.IntN(2)
		}
		submitFaulted(model, i, n)
	}
	settle := func(i int) bool {
		if !runsB.Load() {
			runsB.Store(true)
			step("%d: tiny-b run again; a job to look after", i)
			submit("tiny-a", i)
		}
		for _, id := range jobs {
			if _, err := tb.watchUntil(id, 30*time.Second, func(j *broker.Job) bool { return j.State.Terminal() }); err != nil {
				state := "?"
				if rec, _, err := tb.b.Store.Get(context.Background(), id); err == nil {
					state = fmt.Sprintf("%s (%s, attempt %d, error %q)", rec.State, rec.Model, rec.Attempt, rec.Error)
				}
				n, _ := tb.b.Store.QueueLen(context.Background())
				t.Errorf("seed %d: job %s not ended 30s after the spell: record %s; %d messages queued", seed, id, state, n)
				t.Errorf("seed %d: the worker's loop:\n%s", seed, loopStack())
				return false
			}
		}
		if !pollUntil(10*time.Second, func() bool {
			n, err := tb.b.Store.QueueLen(context.Background())
			return err == nil && n == 0
		}) {
			t.Errorf("seed %d: the queue is not empty once every job ended", seed)
			return false
		}
		return true
	}
	spell := 0
	const ops = 60
	for i := range ops {
		if spell == 0 {
			if i > 0 {
				// The spell's last job comes to an idle worker, its end not stored now
				// and then: it goes back while the loop idles, with nothing published. A
				// back-off noted has the idle loop poll every 10ms until a second after
				// it ended (retryGrace), which would find it: that one is over first.
				gap := time.Duration(30+rng.IntN(50)) * time.Millisecond
				n := rng.IntN(2)
				if n > 0 {
					faultMu.Lock()
					gap = max(gap, time.Until(lastFault.Add(1500*time.Millisecond)))
					faultMu.Unlock()
				}
				<-time.After(gap)
				submitFaulted("tiny-a", i, n)
				if !settle(i) {
					return
				}
			}
			spell = 4 + rng.IntN(12)
		}
		spell--
		switch g := rng.IntN(10); {
		case g < 3:
		case g < 6:
			<-time.After(time.Duration(1+rng.IntN(10)) * time.Millisecond)
		case g < 9:
			<-time.After(time.Duration(20+rng.IntN(80)) * time.Millisecond)
		default:
			n := finishedCalls(tb.fake)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = tb.fake.WaitFor(ctx, func(calls []ollamatest.Call) bool {
				done := 0
				for _, c := range calls {
					if c.Finished {
						done++
					}
				}
				return done > n
			})
			cancel()
			step("%d: a call ended", i)
		}
		switch r := rng.IntN(21); {
		case r < 12:
			submit("tiny-a", i)
		case r < 16:
			submit("tiny-b", i)
		case r < 17:
			tb.fake.FailNext(1, ollamatest.DropConnection)
			step("%d: the next call dropped", i)
		case r < 18:
			tb.fake.FailNext(1, ollamatest.FailStatus(500, "llama runner process has terminated: exit status 2"))
			step("%d: the next call's runner dies", i)
		case r < 19:
			// A long job: a back-off noted before it may end, with its grace, while it runs.
			d := time.Duration(200+rng.IntN(1300)) * time.Millisecond
			time.AfterFunc(d, tb.fake.Hold(""))
			step("%d: calls held for %v", i, d)
		default:
			runsB.Store(!runsB.Load())
			step("%d: tiny-b run: %v", i, runsB.Load())
		}
	}
	settle(ops)
}

// pollUntil checks cond every 10ms until it holds (true) or within passes (false).
func pollUntil(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-time.After(10 * time.Millisecond)
	}
	return true
}

// loopStack is the stack of each worker's loop (worker.(*Worker).Run): where it waits.
func loopStack() string {
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
