package worker_test

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// On the embedded server, a job cut short by the last stop (a kill mid-run, or a stop that
// handed it back) runs first when foreman is back, before a job queued ahead of it that it
// had already gone before; and the queue view, even before the worker's first pick, shows
// it waiting at position 1, not running elsewhere.
func TestJobCutShortByTheLastStopRunsFirst(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		cut   func(j *broker.Job, d *broker.Lease)
		spare bool // a spare copy of its message waits too (shown once, never run)
	}{
		{"killed mid-run", killedMidRun, false},
		{"killed mid-run, with a spare copy", killedMidRun, true},
		{"handed back by a stop", func(j *broker.Job, d *broker.Lease) {
			j.State, j.Error = broker.StateRetrying, "foreman shutting down" // as handBack writes it
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tb := setupExclusive(t)
			ctx := ctxT(t)
			ahead := tb.chat(t, "tiny-b", 1) // older: by age alone it would go first
			cut := tb.chat(t, "tiny-a", 2)
			tb.cutShort(t, cut, tc.cut)
			if tc.spare {
				tb.publishSpare(t, cut, chatBody("tiny-a", 2))
			}
			tb.b.Restart(t)

			// The view of a worker that has not picked yet.
			idle, err := worker.New(worker.Config{Store: tb.b.Store, Target: tb.target, Logger: testLogger()})
			if err != nil {
				t.Fatal(err)
			}
			v, err := idle.QueueView(ctx, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if len(v.Elsewhere) != 0 || len(v.Queued) != 2 || v.Queued[0].JobID != cut.ID || v.Queued[1].JobID != ahead.ID {
				t.Errorf("view: queued %+v, elsewhere %+v; want the cut job at 1, the other at 2, none elsewhere", v.Queued, v.Elsewhere)
			}

			tb.start(t, worker.Config{})
			tb.waitState(t, cut.ID, broker.StateDone)
			tb.waitState(t, ahead.ID, broker.StateDone)
			if calls := inferenceCalls(tb.fake); len(calls) != 2 || calls[0] != "tiny-a:latest" {
				t.Errorf("calls %v, want the cut tiny-a job first, then tiny-b", calls)
			}
		})
	}
}

// After a power loss foreman may come back before its Ollama: with a job cut short
// waiting, the worker waits for the target before taking anything, so that job neither
// spends an attempt on a target that is down nor loses its place behind an older one,
// also across another restart; meanwhile its record says it waits.
func TestJobCutShortWaitsForATargetNotUpYet(t *testing.T) {
	t.Parallel()
	tb := setupExclusive(t)
	ahead := tb.chat(t, "tiny-b", 1)
	cut := tb.chat(t, "tiny-a", 2)
	tb.cutShort(t, cut, killedMidRun)
	tb.b.Restart(t)

	tb.fake.SetDown(true)
	w := tb.start(t, worker.Config{})
	eventually(t, 30*time.Second, "the worker paused for the target", func() bool {
		p := w.Paused()
		return p != nil && p.Reason == broker.PauseTargetUnreachable
	})
	// While it waits, its record says so, not that it runs.
	if j, _, err := tb.b.Store.Get(ctxT(t), cut.ID); err != nil || j.State != broker.StateRetrying || j.Error != "foreman stopped while the job ran" {
		t.Errorf("the cut job's record while the target is down: %+v, %v; want retrying, saying foreman stopped while it ran", j, err)
	}
	// Restarted again before the target is back, foreman still knows it was cut short.
	sctx, cancel := context.WithTimeout(ctxT(t), 10*time.Second)
	err := w.Stop(sctx)
	cancel()
	if err != nil {
		t.Fatalf("stop the worker: %v", err)
	}
	w = tb.start(t, worker.Config{})
	eventually(t, 30*time.Second, "the next worker paused for the target", func() bool {
		p := w.Paused()
		return p != nil && p.Reason == broker.PauseTargetUnreachable
	})
	tb.fake.SetDown(false)
	got := tb.waitState(t, cut.ID, broker.StateDone)
	tb.waitState(t, ahead.ID, broker.StateDone)
	if got.Attempt != 2 {
		t.Errorf("the cut job ended after attempt %d, want 2 (none spent on the down target)", got.Attempt)
	}
	if calls := inferenceCalls(tb.fake); len(calls) != 2 || calls[0] != "tiny-a:latest" {
		t.Errorf("calls %v, want the cut tiny-a job first, then tiny-b", calls)
	}
}

// A target that answers the probe, though badly (a proxy passing only the model calls
// answers the version or model list with an error), is not waited for: the cut job runs.
func TestJobCutShortRunsWhenTheProbeIsAnsweredBadly(t *testing.T) {
	t.Parallel()
	tb := setupExclusive(t)
	cut := tb.chat(t, "tiny-a", 1)
	tb.cutShort(t, cut, killedMidRun)
	tb.b.Restart(t)

	tb.fake.FailNextOn("/api/version", 1<<20, ollamatest.FailStatus(http.StatusNotFound, "not here")) // always
	w := tb.start(t, worker.Config{})
	got := tb.waitState(t, cut.ID, broker.StateDone)
	if got.Attempt != 2 || w.Paused() != nil {
		t.Errorf("attempt %d, paused %+v; want attempt 2, never paused", got.Attempt, w.Paused())
	}
	probed := false
	for _, c := range tb.fake.Calls() {
		probed = probed || c.Path == "/api/version"
	}
	if !probed {
		t.Error("the target was not probed; the test proves nothing")
	}
}

// setupExclusive is a bundle on an exclusive store (the embedded server) whose ack wait
// is far beyond any test's deadline: a job that runs again did not wait it out.
func setupExclusive(t *testing.T) *testBundle {
	t.Helper()
	return setup(t, brokertest.WithStore(func(c *broker.Config) {
		c.Exclusive, c.AckWait = true, 10*time.Minute
	}))
}

// killedMidRun is the record of a job whose foreman died while it ran, as the worker's
// start write left it.
func killedMidRun(j *broker.Job, d *broker.Lease) {
	j.State, j.Attempt, j.QueueSeq = broker.StateWorking, 1, d.Seq
}

// cutShort takes job j's queue message (the first of its queue) as a worker would and
// writes j's record with cut, as the stop that cut it short left it.
func (tb *testBundle) cutShort(t *testing.T, j *broker.Job, cut func(*broker.Job, *broker.Lease)) {
	t.Helper()
	ctx := ctxT(t)
	token, err := broker.ModelToken(j.Model)
	if err != nil {
		t.Fatal(err)
	}
	// A waiting fetch: a no-wait one may come up empty for a moment on a consumer made
	// before the publish (the server tells consumers after it acknowledges).
	d, err := tb.b.Store.NextWait(ctx, token, 15*time.Second)
	if err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("take job %s: %v %v", j.ID, d, err)
	}
	if _, _, err := tb.b.Store.Modify(ctx, j.ID, func(rec *broker.Job) error {
		cut(rec, d)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// Restarted while its Ollama is down, foreman takes no queued job before the target has
// answered a poll: each start would otherwise spend one attempt of the first job on the
// down target (two restarts in an outage failed a job at the default three attempts).
func TestQueuedJobWaitsForATargetNotUpYetAtStart(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	job := tb.chat(t, "tiny-a", 1)
	tb.fake.SetDown(true)
	for start := 1; start <= 2; start++ {
		// Each start has a new inventory, as a restarted foreman does: no poll behind it.
		inv := ollama.NewInventory(ollama.InventoryConfig{Client: tb.target, Logger: testLogger()})
		w := tb.start(t, worker.Config{Inventory: inv})
		eventually(t, 30*time.Second, "the worker paused for the target", func() bool {
			p := w.Paused()
			return p != nil && p.Reason == broker.PauseTargetUnreachable
		})
		if start == 2 {
			break
		}
		ctx, cancel := context.WithTimeout(ctxT(t), 10*time.Second)
		err := w.Stop(ctx)
		cancel()
		if err != nil {
			t.Fatalf("stop the worker: %v", err)
		}
	}
	tb.fake.SetDown(false)
	got := tb.waitState(t, job.ID, broker.StateDone)
	if got.Attempt != 1 {
		t.Errorf("the job ended after attempt %d, want 1 (none spent on the down target)", got.Attempt)
	}
}

// A job queued while the inventory's polls already say the target is not there (an
// outage the worker has not met itself: it was idle) is not taken before the target
// answers: it would spend an attempt on it, or, on a hung target, hold the worker for
// the first-byte timeout first.
func TestQueuedJobWaitsForATargetThePollsFoundDown(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := tb.polledInventory(t)
	w := tb.start(t, worker.Config{Inventory: inv})
	tb.goSilent(t, inv)
	job := tb.chat(t, "tiny-a", 1)
	eventually(t, 30*time.Second, "the worker paused for the target", func() bool {
		p := w.Paused()
		return p != nil && p.Reason == broker.PauseTargetUnreachable
	})
	tb.fake.SetDown(false)
	got := tb.waitState(t, job.ID, broker.StateDone)
	if got.Attempt != 1 {
		t.Errorf("the job ended after attempt %d, want 1 (none spent on the down target)", got.Attempt)
	}
}

// A probe that a hung target never answers ends the pause's error with what happened,
// not a bare "context deadline exceeded" (GET /queue shows it).
func TestProbeOfAHungTargetSaysSo(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.chat(t, "tiny-a", 1)
	tb.fake.FailNextOn("/api/tags", 1<<20, ollamatest.Hang)
	// The poll's own bound is past the probe's: the probe's ends the wait.
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: tb.target, PollTimeout: time.Minute, Logger: testLogger()})
	w := tb.start(t, worker.Config{Inventory: inv})
	var p *broker.Pause
	eventually(t, 30*time.Second, "the worker paused for the target", func() bool {
		p = w.Paused()
		return p != nil && p.Reason == broker.PauseTargetUnreachable
	})
	if !strings.Contains(p.Error, "no answer to the probe") {
		t.Errorf("the pause's error %q: want it to say the probe got no answer", p.Error)
	}
}

// A target whose polls are answered with an error status (a proxy that passes only the
// model calls) runs jobs as before; the worker probes it before its first pick and not
// again at every pick after: a poll answered is a poll that ended.
func TestTargetAnsweringPollsBadlyIsNotProbedEveryPick(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNextOn("/api/tags", 1<<20, ollamatest.Fail500)
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: tb.target, Logger: testLogger()})
	var jobs []*broker.Job
	for range 4 {
		jobs = append(jobs, tb.chat(t, "tiny-a", 1))
	}
	tb.start(t, worker.Config{Inventory: inv})
	for _, j := range jobs {
		tb.waitState(t, j.ID, broker.StateDone)
	}
	polls := 0
	for _, c := range tb.fake.Calls() {
		if c.Path == "/api/tags" {
			polls++
		}
	}
	if polls != 1 {
		t.Errorf("the target was polled %d times for 4 jobs, want once (before the first pick)", polls)
	}
}

// A pause for a connection error ends once the target answers a probe, even with an
// error status: behind a proxy that answers the polls with one for good, the worker
// paused for a dropped chat never ran again.
func TestPauseEndsOnAProbeAnsweredWithAnErrorStatus(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNextOn("/api/tags", 1<<20, ollamatest.Fail500)
	tb.fake.FailNextOn("/api/chat", 1, ollamatest.DropConnection)
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: tb.target, Logger: testLogger()})
	job := tb.chat(t, "tiny-a", 1)
	tb.start(t, worker.Config{Inventory: inv})
	got := tb.waitState(t, job.ID, broker.StateDone)
	if got.Attempt != 2 {
		t.Errorf("the job ended after attempt %d, want 2 (the dropped call, then the run after the pause)", got.Attempt)
	}
}

// After a crash, the sync job that was running dies with its caller: the start's sweep
// asks for its cancel, and it ends canceled without running. The worker's log counts it
// apart from the jobs cut short that do run first, not as one of them: the sweep ends
// before the first pick reads the jobs cut short. A sweep made beside the loop (not on
// Run's own goroutine, which it holds) is held until the loop fetched a job, so that a
// first pick that could come before it does every time.
func TestCutShortSyncJobOfTheDeadProcessIsNotLoggedAsRunning(t *testing.T) {
	t.Parallel()
	tb := setupExclusive(t)
	dead := tb.syncJob(t, "tiny-a", broker.NewID()) // the gateway of the process that died
	async := tb.chat(t, "tiny-b", 1)
	tb.cutShort(t, dead, killedMidRun)
	tb.cutShort(t, async, killedMidRun)
	tb.b.Restart(t)

	var logs lockedBuffer
	fetched := make(chan struct{})
	var fetchedOnce sync.Once
	cfg := worker.Config{
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Trace: func(_, stage string) {
			if stage == worker.StageFetched {
				fetchedOnce.Do(func() { close(fetched) })
			}
		},
	}
	ctx := ctxT(t)
	tb.start(t, worker.WithBeforeSweep(cfg, func() {
		if !worker.OnRunsGoroutine() {
			select {
			case <-fetched:
			case <-ctx.Done():
			}
		}
	}))
	if got := tb.waitState(t, dead.ID, broker.StateCanceled); got.Error != broker.CallerGoneReason {
		t.Errorf("the dead process's sync job ended %q, want %q", got.Error, broker.CallerGoneReason)
	}
	tb.waitState(t, async.ID, broker.StateDone)
	if n := callsOf(tb, "tiny-a"); n != 0 {
		t.Errorf("the target got %d calls for the dead process's sync job, want 0", n)
	}
	out := logs.String()
	if !strings.Contains(out, `msg="jobs cut short by the last stop run first" jobs=1`) ||
		!strings.Contains(out, `msg="jobs cut short by the last stop end canceled, unrun" jobs=1`) {
		t.Errorf("log:\n%s\nwant one job cut short running first and one ending canceled", out)
	}
}
