package worker

import (
	"context"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A submit announces its job before its queue message is stored, and NATS's copy of the
// message can reach the worker before the stream has stored it too (a slow disk): a look
// begun then finds the queue empty. That look is no proof that the job was seen: when
// its wake-up is spent (its fetch and rechecks came up empty), the look after the next
// job must still be made, or the job waits for IdlePoll, and for as long as other jobs
// keep coming before IdlePoll (each skipping its look) it is never run.
func TestAJobPublishedBeforeALookThatMissedItIsLookedForAfterTheNext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := brokertest.New(t)
	w, _ := testWorker(t, b, Config{EarlyCall: true})
	x := &broker.Job{ID: broker.NewID(), Model: "tiny-b", Kind: broker.KindChat}
	w.published(x.ID) // announced, and its NATS copy seen; not stored yet
	if d, queued, err := w.next(ctx); d != nil || queued || err != nil || !w.quiet {
		t.Fatalf("look at an empty queue: %v, queued %v, %v, quiet %v", d, queued, err, w.quiet)
	}
	// Stored now, after the look: its wake-up was spent on the fetch and the rechecks.
	b.CreateRecord(t, x)
	b.PublishBare(t, x, chatBodyOf("tiny-b"))
	// The next job is woken for, fetched and run; its end is being stored.
	j1 := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	w.published(j1.ID)
	w.fetched(j1.ID)
	w.setFinishing(j1.ID, true)
	if !w.lookNeeded(&broker.Lease{JobID: j1.ID, Token: "t", Seq: 1 << 40}) {
		t.Error("no look after the next job: the job the look before missed waits for IdlePoll")
	}
}

// A wake-up that took the place of another job's (poke keeps the newest) and turns out
// stale (its own job was fetched and run meanwhile) still stands for the job it replaced,
// which waits: the idle loop looks at once rather than drop it and sleep until IdlePoll.
func TestAStaleWakeUpThatReplacedAnotherEndsTheIdleWait(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, _ := testWorker(t, brokertest.New(t), Config{EarlyCall: true, IdlePoll: time.Hour})
	waiting, ran := broker.NewID(), broker.NewID()
	w.poke(wakeup{jobID: waiting, fresh: true})
	w.poke(wakeup{jobID: ran, fresh: true}) // replaces the first
	w.fetched(ran)                          // and its job was taken since
	got := make(chan wakeup, 1)
	go func() { got <- w.idle(ctx, 0) }()
	select {
	case u := <-got:
		if u.jobID != "" {
			t.Errorf("idle returned the stale wake-up of %s", u.jobID)
		}
	case <-ctx.Done():
		t.Fatal("the idle wait dropped the stale wake-up and with it the job it replaced: it waits for IdlePoll")
	}
}
