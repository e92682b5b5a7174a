package worker_test

import (
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A disk that fills up under queued jobs pauses the worker rather than spend the jobs'
// deliveries on start writes that cannot be stored (past the delivery limit, with their
// failed state unstorable too, they would stay queued for nobody); once there is room
// again, every job runs, each once.
func TestStoreOutOfRoomPausesTheWorker(t *testing.T) {
	tb := setup(t, brokertest.WithNATS(func(c *natsd.Config) { c.MaxStore = 8 << 20 }))
	var fetched atomic.Int32
	jobs := []*broker.Job{tb.chat(t, "tiny-a", 1), tb.chat(t, "tiny-a", 2)}
	giveBack := brokertest.FillStore(t, tb.b.Conn)
	w := tb.start(t, worker.Config{Trace: func(id, stage string) {
		if stage == worker.StageFetched {
			fetched.Add(1)
		}
	}})
	eventually(t, 10*time.Second, "the worker taking a job", func() bool { return fetched.Load() >= 1 })
	// The worker's own retries (RetryDelay 5ms here) would spend the five deliveries a job
	// has in well under a second.
	since := time.Now()
	eventually(t, 10*time.Second, "a second with the store full", func() bool {
		if n := fetched.Load(); n > 2 {
			t.Fatalf("%d deliveries while the store had no room", n)
		}
		return time.Since(since) > time.Second
	})
	outage := int(fetched.Load()) // deliveries while the store was full, each with its call
	// The queue view shows the pause, and both jobs waiting: the one whose start was
	// refused went back to the queue.
	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if v.Paused == nil || v.Paused.Reason != broker.PauseStoreRefusesWrites || v.Paused.Error == "" {
		t.Errorf("pause %+v, want %s with its error", v.Paused, broker.PauseStoreRefusesWrites)
	}
	if v.Running != "" || len(v.Queued) != len(jobs) {
		t.Errorf("running %q and %d queued, want none running and %d queued", v.Running, len(v.Queued), len(jobs))
	}
	giveBack()
	for _, j := range jobs {
		tb.waitState(t, j.ID, broker.StateDone)
	}
	tb.waitQueueEmpty(t)
	if v, err := w.QueueView(ctxT(t), time.Now()); err != nil || v.Paused != nil {
		t.Errorf("pause %+v (%v) after the store took writes again", v.Paused, err)
	}
	// A call goes out with its start write (ADR-0032): one whose start was refused is cut
	// off, unless the target answered first. So the calls are the jobs' own, and one for
	// each delivery during the outage at most.
	if n := len(inferenceCalls(tb.fake)); n > len(jobs)+outage {
		t.Errorf("target called %d times, want at most %d (each job once, and %d deliveries while full)", n, len(jobs)+outage, outage)
	}
}
