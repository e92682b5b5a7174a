package worker_test

import (
	"context"
	"slices"
	"strings"
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

// markRan writes job id's record as one whose attempt ran on the foreman of boot id from
// its queue message (found among the queue's messages) and failed, the job waiting to
// retry from that message (NAKed): what a retrying write leaves.
func (tb *testBundle) markRan(t *testing.T, id, boot string) {
	t.Helper()
	msgs, err := tb.b.Store.Stale(ctxT(t), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(msgs, func(p broker.Pending) bool { return p.JobID == id })
	if i < 0 {
		t.Fatalf("job %s has no queue message", id)
	}
	if _, _, err := tb.b.Store.Modify(ctxT(t), id, func(j *broker.Job) error {
		j.State, j.Error, j.Attempt, j.QueueSeq = broker.StateRetrying, "attempt failed", 1, msgs[i].Seq
		j.Runner, j.RunnerBoot, j.RunnerAttempt = "mac-b", boot, 1
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// What ends a stale retry that another foreman's expiry leaves to its runner (ADR-0127):
// a runner that is gone (its presence lapsed or withdrawn, here never announced) leaves
// it to every foreman's expiry; one that is present but does not hold its delivery (a
// NAKed retry; its worker runs, takes nothing) ends it with its own expiry. Left to a
// runner whose presence was not read, or to the runner itself, the job waited until
// JetStream dropped its message and record, ending in no state.
func TestAStaleRetryOfAGoneOrIdleRunnerIsExpired(t *testing.T) {
	t.Parallel()
	store := keptStore(3)
	tb := setup(t, brokertest.WithStore(store)) // the idle runner's store
	gone, idle := tb.chat(t, "tiny-a", 1), tb.chat(t, "tiny-a", 2)
	tb.markRan(t, gone.ID, broker.NewID())
	tb.markRan(t, idle.ID, tb.b.Store.BootID())
	none := func(context.Context, string) bool { return false }
	tb.start(t, worker.Config{Runs: none})     // the idle runner: its expiry only
	tb.expiryOnly(t, store, func([]string) {}) // another foreman
	for _, j := range []*broker.Job{gone, idle} {
		if got := tb.waitEnded(t, j.ID); got.State != broker.StateFailed || got.Error != broker.ExpiredError(keptTTL, 1) {
			t.Errorf("job %s ended %s (%s), want failed, %s", j.ID, got.State, got.Error, broker.ExpiredError(keptTTL, 1))
		}
	}
}

// A worker paused for a target that went away (waitIfGone) after NAKing a job's retry
// still holds that delivery's keeper, settled: the job waits in the queue, not here, and
// its own expiry ends it once it waited a TTL, however long the target stays away
// (keeps counts no settled delivery).
func TestARetryNAKedByAWorkerPausedForItsTargetIsExpired(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(keptStore(2)))
	tb.fake.SetDown(true)
	j := tb.chat(t, "tiny-a", 1)
	w := tb.start(t, worker.Config{})
	eventually(t, 10*time.Second, "the worker paused for its target", func() bool { return w.Paused() != nil })
	got := tb.waitEnded(t, j.ID)
	if got.State != broker.StateFailed || !strings.HasPrefix(got.Error, "expired: ") {
		t.Errorf("job ended %s (%s), want failed, expired", got.State, got.Error)
	}
	if got.RunnerBoot != tb.b.Store.BootID() {
		t.Errorf("job's record names runner %q, want this worker's: it never took the job before its pause", got.RunnerBoot)
	}
	if w.Paused() == nil {
		t.Error("the worker is no longer paused: the job was not expired while it waited for its target")
	}
}

// A job with a second queue message (a spare copy, or the old message a requeue could not
// ack) whose record names a present runner and the other message, both stale: the runner
// may hold the delivery of the one its record names (kept for a full queue, or before its
// requeue), and only it knows. Another foreman's expiry, meeting the older message first,
// judged the job from it as if no attempt had run from the queue, and ended it.
func TestAStaleRetryWithASecondMessageIsLeftToItsRunner(t *testing.T) {
	t.Parallel()
	store := keptStore(3)
	tb := setup(t, brokertest.WithStore(store)) // the runner's store, present, no worker
	j := tb.chat(t, "tiny-a", 1)
	tb.publishSpare(t, j, chatBody("tiny-a", 1))
	msgs, err := tb.b.Store.Stale(ctxT(t), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 {
		t.Fatalf("%d queue messages, want the job's two", len(msgs))
	}
	if _, _, err := tb.b.Store.Modify(ctxT(t), j.ID, func(rec *broker.Job) error {
		rec.State, rec.Error, rec.Attempt, rec.QueueSeq = broker.StateRetrying, "attempt failed", 1, msgs[1].Seq
		rec.Runner, rec.RunnerBoot, rec.RunnerAttempt = "mac-b", tb.b.Store.BootID(), 1
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	hook, seen := sawStale(j.ID)
	tb.expiryOnly(t, store, hook)
	select {
	case <-seen:
	case <-ctxT(t).Done():
		t.Fatal("no expiry look found the job's messages stale")
	}
	rec, _, err := tb.b.Store.Get(ctxT(t), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != broker.StateRetrying {
		t.Fatalf("job ended %s (%s), want it left retrying for its runner", rec.State, rec.Error)
	}
}
