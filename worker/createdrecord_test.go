package worker_test

import (
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A job submitted in this process to an idle worker starts from the record its submit's
// create stored, handed over in the process (broker.Published.Created), with no read of
// the store. The read the worker began at the wake-up came before the submit's writes
// (the wake-up is their announcement) and nearly always found nothing; after the fetch
// it read the record again: two requests to the store for a record the process had.
func TestAJobSubmittedHereStartsWithoutReadingItsRecord(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	taken := make(chan struct{})
	var once, idleOnce sync.Once
	idle := make(chan struct{})
	cfg := worker.Config{IdlePoll: time.Hour, Trace: func(id, stage string) {
		if id == j.ID && stage == worker.StageRecord {
			once.Do(func() { close(taken) })
		}
	}}
	tb.start(t, worker.WithOnIdle(cfg, func(time.Duration) { idleOnce.Do(func() { close(idle) }) }))
	ctx := ctxT(t)
	select {
	case <-idle:
	case <-ctx.Done():
		t.Fatal("the worker never went idle")
	}
	// Every read of a record is a request to the jobs bucket's stream, direct or not.
	reads, err := tb.b.Conn.SubscribeSync("$JS.API.*.*.KV_" + broker.JobsBucket + ".>")
	if err != nil {
		t.Fatal(err)
	}
	plain, err := tb.b.Conn.SubscribeSync("$JS.API.*.*.*.KV_" + broker.JobsBucket)
	if err != nil {
		t.Fatal(err)
	}
	direct, err := tb.b.Conn.SubscribeSync("$JS.API.*.*.KV_" + broker.JobsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.b.Store.Submit(ctx, j, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-taken:
	case <-ctx.Done():
		t.Fatal("the job's record was never taken")
	}
	// A read made before the record was taken reached the server before its answer did,
	// and so this connection before the flush's answer.
	if err := tb.b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	var subjects []string
	for _, sub := range []*nats.Subscription{reads, plain, direct} {
		for {
			m, err := sub.NextMsg(0)
			if err != nil {
				break
			}
			subjects = append(subjects, m.Subject)
		}
	}
	if len(subjects) != 0 {
		t.Errorf("the worker read the record before starting the job: %v", subjects)
	}
	if got := tb.waitEnded(t, j.ID); got.State != broker.StateDone || got.Attempt != 1 {
		t.Errorf("job ended %s at attempt %d (%s), want done at attempt 1", got.State, got.Attempt, got.Error)
	}
}
