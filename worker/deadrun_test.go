package worker_test

import (
	"context"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A job whose record says it runs while nothing runs it (its foreman killed mid-run on a
// shared NATS, and no live foreman runs its model) ends failed when its message has
// waited a job TTL, as the queued job beside it does, rather than vanishing with its
// record and message at the TTL (ADR-0043).
func TestDeadRunOnASharedStoreEndsAtTheTTL(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.JobTTL, c.AckWait = 6*time.Second, 3*time.Second }))
	cut := tb.chat(t, "tiny-b", 1)     // was running on a foreman that died
	waiting := tb.chat(t, "tiny-b", 2) // queued behind it
	p, ok, err := tb.b.Store.Oldest(ctxT(t), 0)
	if err != nil || !ok || p.JobID != cut.ID {
		t.Fatalf("oldest queue message: %+v %v %v", p, ok, err)
	}
	// The dead foreman's start write.
	if _, _, err := tb.b.Store.Modify(ctxT(t), cut.ID, func(j *broker.Job) error {
		j.State, j.Attempt, j.QueueSeq = broker.StateWorking, 1, p.Seq
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The live foreman's Mac has no tiny-b (ADR-0029).
	tb.start(t, worker.Config{Runs: func(_ context.Context, model string) bool { return model != "tiny-b:latest" }})
	if got := tb.waitState(t, waiting.ID, broker.StateFailed); !isExpired(got) {
		t.Errorf("queued job: %q", got.Error)
	}
	if got := tb.waitState(t, cut.ID, broker.StateFailed); !isExpired(got) || got.Attempt != 1 {
		t.Errorf("dead run: %q, attempt %d", got.Error, got.Attempt)
	}
	tb.waitQueueEmpty(t)
}

// The same on the embedded server: a job cut short by kill -9 behind an older job of its
// queue (one waiting out a back-off) is not found at its queue's head after the restart
// (ADR-0044), and its record keeps saying working. With the target down to the TTL it
// ends failed beside the older job.
func TestDeadRunBehindAnotherEndsAtTheTTL(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) {
		c.Exclusive, c.AckWait, c.JobTTL = true, 10*time.Minute, 6*time.Second
	}))
	ctx := ctxT(t)
	token, _ := broker.ModelToken("tiny-a")
	older := tb.chat(t, "tiny-a", 1)
	cut := tb.chat(t, "tiny-a", 2)
	// older: its first attempt failed, it waits out its back-off.
	d, err := tb.b.Store.Next(ctx, token)
	if err != nil || d == nil || d.JobID != older.ID {
		t.Fatalf("take %s: %v %v", older.ID, d, err)
	}
	if _, _, err := tb.b.Store.Modify(ctx, older.ID, func(j *broker.Job) error {
		j.State, j.Attempt, j.QueueSeq, j.Error = broker.StateRetrying, 1, d.Seq, "ollama: connection refused"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := d.Msg.NakWithDelay(time.Minute); err != nil {
		t.Fatal(err)
	}
	tb.cutShort(t, cut, killedMidRun) // taken and running when foreman was killed
	tb.b.Restart(t)
	tb.fake.SetDown(true) // and Ollama off for the night
	tb.start(t, worker.Config{})
	if got := tb.waitState(t, older.ID, broker.StateFailed); !isExpired(got) {
		t.Errorf("older job: %q", got.Error)
	}
	if got := tb.waitState(t, cut.ID, broker.StateFailed); !isExpired(got) {
		t.Errorf("dead run: %q", got.Error)
	}
}

func isExpired(j *broker.Job) bool { return len(j.Error) > 8 && j.Error[:8] == "expired:" }
