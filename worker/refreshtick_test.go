package worker_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A running job's record refresh that the store is slow to answer (a leader election, a
// disk that stalls) does not hold back the delivery's in-progress ticks: made between
// them, it held them for as long as it took, the delivery's ack wait ran out, and another
// foreman on the same NATS took the job and ran it a second time.
func TestSlowRecordRefreshDoesNotHoldTheTicks(t *testing.T) {
	const ackWait = 3 * time.Second // ticks a second apart
	const ttl = 16 * time.Second    // a refresh offered every 2 s
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) {
		c.AckWait = ackWait
		c.JobTTL = ttl
	}))
	release := tb.fake.Hold("tiny-a")
	defer release()
	job := tb.chat(t, "tiny-a", 1)
	var fetched atomic.Int32
	trace := func(id, stage string) {
		if id == job.ID && stage == worker.StageFetched {
			fetched.Add(1)
		}
	}
	blocked, unblock := make(chan struct{}), make(chan struct{})
	var blockOnce sync.Once
	tb.start(t, worker.WithBeforeRefresh(worker.Config{Trace: trace}, func(id string) {
		if id == job.ID {
			blockOnce.Do(func() { close(blocked) })
			<-unblock
		}
	}))
	letGo := sync.OnceFunc(func() { close(unblock) })
	t.Cleanup(letGo) // before the worker stops: its keep-alive ends after the refresh
	select {
	case <-blocked:
	case <-waitCtx(t).Done():
		t.Fatal("no refresh of the running job's record")
	}
	// Another foreman's worker on the same store takes the job once its ack wait runs out.
	tb.start(t, worker.Config{Trace: trace})
	since := time.Now()
	eventually(t, 30*time.Second, "two ack waits with the refresh held", func() bool {
		if n := fetched.Load(); n != 1 {
			t.Fatalf("the running job's message was delivered %d times while its refresh was held", n)
		}
		return time.Since(since) > 2*ackWait
	})
	letGo()
	release()
	if rec := tb.waitState(t, job.ID, broker.StateDone); rec.Attempt != 1 {
		t.Errorf("done at attempt %d, want 1", rec.Attempt)
	}
	if calls := finishedCalls(tb.fake); calls != 1 {
		t.Errorf("target answered %d calls, want 1", calls)
	}
}
