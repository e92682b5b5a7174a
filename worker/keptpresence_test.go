package worker_test

import (
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// An outage's backlog on a shared NATS: many waiting jobs whose last attempt ran on one
// other foreman, still present, from the messages that are now stale. Each expiry look
// read that foreman's presence once per job (two round trips on a replicated bucket for
// one that is gone), every look, however many jobs named it: a look over thousands of
// them took thousands of reads. One read per runner per look tells the same.
func TestAnExpiryLookReadsARunnersPresenceOnce(t *testing.T) {
	t.Parallel()
	const jobs = 3
	store := keptStore(jobs + 1)
	tb := setup(t, brokertest.WithStore(store)) // the runner's store, present, no worker
	var ids []string
	for i := range jobs {
		ids = append(ids, tb.chat(t, "tiny-a", i).ID)
	}
	// Each ran once on the bundle's foreman from its message, failed, and waits to retry
	// from that message (NAKed): the record names the runner and the message.
	msgs, err := tb.b.Store.Stale(ctxT(t), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	boot := tb.b.Store.BootID()
	for _, m := range msgs {
		if _, _, err := tb.b.Store.Modify(ctxT(t), m.JobID, func(j *broker.Job) error {
			j.State, j.Error, j.Attempt, j.QueueSeq = broker.StateRetrying, "attempt failed", 1, m.Seq
			j.Runner, j.RunnerBoot, j.RunnerAttempt = "mac-b", boot, 1
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	var reads atomic.Int32
	perLook := make(chan int32, 1)
	tb.expiryOnlyWith(t, store, func(cfg worker.Config) worker.Config {
		cfg = worker.WithBeforePresence(cfg, func(id string) {
			if id == boot {
				reads.Add(1)
			}
		})
		return worker.WithAfterExpiry(cfg, func(stale []string) {
			n := reads.Swap(0)
			for _, id := range ids {
				if !slices.Contains(stale, id) {
					return
				}
			}
			select {
			case perLook <- n:
			default:
			}
		})
	})
	select {
	case n := <-perLook:
		if n != 1 {
			t.Errorf("a look over %d stale jobs of one present runner read its presence %d times, want once", jobs, n)
		}
	case <-ctxT(t).Done():
		t.Fatal("no expiry look found the jobs' messages stale")
	}
	for _, id := range ids { // that runner's expiry judges them
		if rec, _, err := tb.b.Store.Get(ctxT(t), id); err != nil || rec.State != broker.StateRetrying {
			t.Errorf("job %s: %+v (%v), want it left retrying for its runner", id, rec, err)
		}
	}
}
