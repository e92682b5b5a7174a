package worker_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A second queue message of a job (an idempotent retry re-publishes a queued job, and
// after the duplicate window the queue keeps both) never runs the job again, even when
// it is fetched while the first run's result is still being stored.
func TestSpareQueueMessageOfARunningJobIsDropped(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	defer release()
	j := tb.chat(t, "tiny-a", 1)
	storing := make(chan struct{}, 1)
	stored := make(chan struct{})
	tb.start(t, worker.WithBeforeStoreDone(worker.Config{}, func(string) {
		storing <- struct{}{}
		<-stored
	}))
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	tb.publishSpare(t, j, chatBody("tiny-a", 1))
	release()
	select {
	case <-storing:
	case <-waitCtx(t).Done():
		t.Fatal("the first run never finished")
	}
	// While the first run's result waits to be stored, the worker meets the spare: it is
	// gone from the queue (dropped) or has started a second call (run again).
	eventually(t, 30*time.Second, "spare copy fetched", func() bool {
		n, err := tb.b.Store.QueueLen(ctxT(t))
		return err == nil && n == 1 || len(inferenceCalls(tb.fake)) > 1
	})
	close(stored)
	got := tb.waitState(t, j.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
	if calls := inferenceCalls(tb.fake); len(calls) != 1 || got.Attempt != 1 {
		t.Fatalf("job ran %d times (attempt %d), want once", len(calls), got.Attempt)
	}
}

// A record written by an older foreman has no QueueSeq: after an upgrade following a
// crash mid-run, the interrupted job's own message comes back (delivered once, as the
// consumer was reset) and must run the job, not be dropped as a spare.
func TestLegacyRunningRecordRunsFromItsMessage(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	j := tb.chat(t, "tiny-a", 1)
	if _, _, err := tb.b.Store.Modify(ctxT(t), j.ID, func(j *broker.Job) error {
		j.State, j.Attempt, j.QueueSeq = broker.StateWorking, 1, 0
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	tb.start(t, worker.Config{})
	got := tb.waitState(t, j.ID, broker.StateDone)
	if got.Attempt != 2 {
		t.Fatalf("attempt %d, want 2", got.Attempt)
	}
}

// publishSpare stores a spare copy of job j's queue message: the same job on the same
// queue subject under another message id (an idempotent retry after the duplicate
// window leaves one).
func (tb *testBundle) publishSpare(t *testing.T, j *broker.Job, body string) {
	t.Helper()
	token, err := broker.ModelToken(j.Model)
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg(broker.QueueSubject(token))
	msg.Header.Set(broker.HeaderJobID, j.ID)
	msg.Header.Set(broker.HeaderModel, j.Model)
	msg.Header.Set(broker.HeaderKind, string(j.Kind))
	msg.Data = []byte(body)
	js, err := jetstream.New(tb.b.Conn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(ctxT(t), msg, jetstream.WithMsgID("spare-"+j.ID)); err != nil {
		t.Fatal(err)
	}
}
