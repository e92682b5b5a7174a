package worker_test

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A worker paused on a store fault that only a restart ends says so in its own pause,
// and goes on saying so while a fault check hangs (a disk that hangs: the check's answer
// does not come within a second): the store's fault flag stands through it, as an
// unanswered check says nothing of the fault going (it dropped, once), and the pause
// keeps its mark. GET /queue, foreman queue and the status page read the pause: they do
// not flicker back to "jobs wait until it resumes" while the worker is still paused on
// the same fault.
func TestPauseForAStoreFaultStaysRestartNeeded(t *testing.T) {
	t.Parallel()
	const (
		healthy = iota
		faulted
		hanging
	)
	var mode, hangs atomic.Int32
	hang := make(chan struct{})
	defer close(hang)
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) {
		c.WriteFault = func() error {
			switch mode.Load() {
			case faulted:
				return errors.New("JetStream stream '$G > FOREMAN_QUEUE' write error: no space left on device")
			case hanging:
				hangs.Add(1)
				<-hang
			}
			return nil
		}
	}))
	tb.chat(t, "tiny-a", 1)
	mode.Store(faulted)
	if tb.b.Store.CheckWriteFault() == nil {
		t.Fatal("the injected write fault does not stand")
	}
	// One probe after the pause begins, then none for the test's length: the pause shown
	// is the one the start write's fault began.
	w := tb.start(t, worker.WithProbeDelay(worker.Config{}, time.Hour))
	eventually(t, 10*time.Second, "the paused worker's probe", func() bool {
		p := w.Paused()
		return p != nil && strings.Contains(p.Error, "probe write")
	})
	if p := w.Paused(); p.Reason != broker.PauseStoreRefusesWrites || !p.RestartNeeded {
		t.Fatalf("pause %+v: want %s with restart needed", p, broker.PauseStoreRefusesWrites)
	}

	mode.Store(hanging)
	eventually(t, 10*time.Second, "a fault check that hangs", func() bool {
		_ = tb.b.Store.CheckWriteFault()
		return hangs.Load() > 0
	})
	if tb.b.Store.CheckWriteFault() == nil || tb.b.Store.WriteFault() == nil {
		t.Error("the store's fault flag dropped on a check that hangs")
	}
	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if v.Paused == nil || !v.Paused.RestartNeeded {
		t.Errorf("queue view's pause %+v once the fault check hung: want restart still needed", v.Paused)
	}
}

// A store fault that only a restart ends, found while the worker is idle (the queue is
// empty, or holds only messages of jobs that ended), shows as the worker's pause with
// restart needed all the same: it will take no job until foreman restarts (every start
// write fails), and GET /queue, foreman queue, the status page and foreman_worker_paused
// read that pause. Without it they said nothing while submits got 503 "needs a restart".
func TestIdleWorkerShowsAStoreFaultThatNeedsARestart(t *testing.T) {
	t.Parallel()
	tb, faulted := setupFullDisk(t)
	w := tb.start(t, worker.Config{})
	if p := w.PauseShown(); p != nil {
		t.Fatalf("pause %+v with a healthy store", p)
	}
	faulted.Store(true)
	if tb.b.Store.CheckWriteFault() == nil {
		t.Fatal("the injected write fault does not stand")
	}
	p := w.PauseShown()
	if p == nil || p.Reason != broker.PauseStoreRefusesWrites || !p.RestartNeeded || !strings.Contains(p.Error, "no space left on device") {
		t.Fatalf("idle worker's pause %+v with a store fault that needs a restart: want %s, restart needed, the fault", p, broker.PauseStoreRefusesWrites)
	}
	if p.Since.IsZero() {
		t.Errorf("pause %+v: no since", p)
	}
	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if v.Paused == nil || !v.Paused.RestartNeeded {
		t.Errorf("queue view's pause %+v: want restart needed", v.Paused)
	}
}

// An idle worker's store pause is shown from when the fault was first found: later
// checks that find it still there do not move its since. A fault that may pass (a data
// directory that could not be checked) is no pause of an idle worker: nothing says only
// a restart ends it.
func TestIdleWorkerStoreFaultPauseKeepsItsSince(t *testing.T) {
	t.Parallel()
	var fault atomic.Pointer[error]
	var checks atomic.Int32
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) {
		c.WriteFault = func() error {
			checks.Add(1)
			if err := fault.Load(); err != nil {
				return *err
			}
			return nil
		}
	}))
	w := tb.start(t, worker.Config{})
	mayPass := broker.FaultMayPass(errors.New("data directory: stat: permission denied"))
	fault.Store(&mayPass)
	if tb.b.Store.CheckWriteFault() == nil {
		t.Fatal("the injected write fault does not stand")
	}
	if p := w.PauseShown(); p != nil {
		t.Fatalf("idle worker's pause %+v with a store fault that may pass: want none", p)
	}

	full := errors.New("JetStream stream '$G > FOREMAN_QUEUE' write error: no space left on device")
	fault.Store(&full)
	eventually(t, 10*time.Second, "a check to find the fault that needs a restart", func() bool {
		return broker.NeedsRestart(tb.b.Store.CheckWriteFault())
	})
	first := w.PauseShown()
	if first == nil || !first.RestartNeeded {
		t.Fatalf("idle worker's pause %+v: want restart needed", first)
	}
	found := checks.Load()
	eventually(t, 10*time.Second, "another check of the standing fault", func() bool {
		return tb.b.Store.CheckWriteFault() != nil && checks.Load() > found
	})
	if p := w.PauseShown(); p == nil || !p.Since.Equal(first.Since) {
		t.Errorf("pause %+v after another check, want it since %s as before", p, first.Since)
	}
}

// A store fault that only a restart ends, found while a job runs, is not shown as the
// worker's pause: the worker is running that job (GET /queue names it), and pauses on
// the fault when the job's end cannot be stored.
func TestRunningWorkerShowsNoStorePauseUntilItsJobEnds(t *testing.T) {
	t.Parallel()
	tb, faulted := setupFullDisk(t)
	w := tb.start(t, worker.Config{})
	release := tb.fake.Hold("tiny-a")
	j := tb.chat(t, "tiny-a", 1)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		release()
		t.Fatal(err)
	}
	faulted.Store(true)
	if tb.b.Store.CheckWriteFault() == nil {
		release()
		t.Fatal("the injected write fault does not stand")
	}
	p := w.PauseShown()
	v, err := w.QueueView(ctxT(t), time.Now())
	release()
	if err != nil {
		t.Fatal(err)
	}
	if p != nil || v.Paused != nil {
		t.Errorf("pause %+v, view's pause %+v while job %s runs: want none", p, v.Paused, j.ID)
	}
	if v.Running != j.ID {
		t.Errorf("view runs %q, want %s", v.Running, j.ID)
	}
	eventually(t, 10*time.Second, "the worker paused on the store fault once its job ended", func() bool {
		p := w.PauseShown()
		return p != nil && p.Reason == broker.PauseStoreRefusesWrites && p.RestartNeeded
	})
}

// setupFullDisk is a bundle whose store finds a full disk's write fault, one that only
// a restart ends, once faulted is set.
func setupFullDisk(t *testing.T) (*testBundle, *atomic.Bool) {
	t.Helper()
	faulted := &atomic.Bool{}
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) {
		c.WriteFault = func() error {
			if faulted.Load() {
				return errors.New("JetStream stream '$G > FOREMAN_QUEUE' write error: no space left on device")
			}
			return nil
		}
	}))
	return tb, faulted
}
