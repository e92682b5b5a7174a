package worker_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A job whose queue message comes again while its end is being stored (foreman was
// frozen, a VM suspended, for longer than the ack wait: at the thaw the server's timer
// hands the message out again before the keep-alive's tick reaches it) is not run a
// second time: its end settles the message.
func TestRedeliveryOfAFinishingJobDoesNotRunItAgain(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	j := tb.chat(t, "tiny-a", 1)
	_, fetched, stored := holdEnd(t, tb, j, nil)
	// The thaw, without a freeze: the message is handed out again (a NAK of its
	// delivery, as the ack wait's end does) while the first run's end waits to be stored.
	tb.redeliver(t)
	waitRefetched(t, fetched)
	// A second run, if any, has begun its call or is about to: a later job is fetched
	// only after the redelivery is settled, so the job behind shows which it was.
	next := tb.chat(t, "tiny-a", 1)
	close(stored)
	got := tb.waitState(t, j.ID, broker.StateDone)
	tb.waitState(t, next.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
	if calls := inferenceCalls(tb.fake); len(calls) != 2 || got.Attempt != 1 {
		t.Fatalf("target called %d times for two jobs, the first at attempt %d: want each once", len(calls), got.Attempt)
	}
}

// A cancel requested once a job's answer went out is moot: its end stores it done. Its
// queue message delivered again meanwhile (foreman frozen past the ack wait) is left to
// that end as well, not taken for a job whose runner died with a cancel requested, which
// would end it canceled after its client had the whole answer.
func TestRedeliveryOfAFinishingJobCanceledLateEndsItDone(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	j := tb.chat(t, "tiny-a", 1)
	_, fetched, stored := holdEnd(t, tb, j, nil)
	if _, err := tb.b.Store.Cancel(ctxT(t), j.ID, "too late"); err != nil {
		t.Fatal(err)
	}
	tb.redeliver(t)
	waitRefetched(t, fetched)
	// A later job is fetched only once the redelivery is settled.
	next := tb.chat(t, "tiny-a", 1)
	close(stored)
	tb.waitState(t, next.ID, broker.StateDone)
	got := tb.waitEnded(t, j.ID)
	if got.State != broker.StateDone || got.Attempt != 1 {
		t.Fatalf("job canceled after its answer went out: %s (%q) at attempt %d, want done at 1", got.State, got.Error, got.Attempt)
	}
}

// The end of a finishing job may be stored, and its mark gone, between the record read
// of its redelivered message and the check of the mark: the record read says running,
// and the job ended. Whether the end was being stored is taken before the read, so that
// delivery is left to the end as well, and the job is not run a second time.
func TestRedeliveryReadAsTheEndIsStoredDoesNotRunItAgain(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	j := tb.chat(t, "tiny-a", 1)
	// The redelivery's record read holds the worker until the end is stored.
	reread, proceed := make(chan struct{}, 1), make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(proceed) }) }
	t.Cleanup(release)
	var records atomic.Int32
	w, _, stored := holdEnd(t, tb, j, func(stage string) {
		if stage == worker.StageRecord && records.Add(1) == 2 {
			reread <- struct{}{}
			<-proceed
		}
	})
	tb.redeliver(t)
	select {
	case <-reread:
	case <-waitCtx(t).Done():
		t.Fatal("the redelivered message's record was not read")
	}
	// The record was read while the end waited: it says the job runs. Now the end is
	// stored and the job is no longer the worker's before the redelivery is looked at.
	close(stored)
	tb.waitState(t, j.ID, broker.StateDone)
	eventually(t, 10*time.Second, "the job's end stored and its mark gone", func() bool { return !w.Own(j.ID) })
	release()
	next := tb.chat(t, "tiny-a", 1)
	tb.waitState(t, next.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
	got, _, err := tb.b.Store.Get(ctxT(t), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if calls := inferenceCalls(tb.fake); len(calls) != 2 || got.State != broker.StateDone || got.Attempt != 1 {
		t.Fatalf("target called %d times for two jobs, the first %s at attempt %d: want each once, done at 1", len(calls), got.State, got.Attempt)
	}
}

// holdEnd starts tb's worker with the end of job j's first run held before it is
// stored, and waits until it is held there. fetched then tells of each later fetch of
// j's message; closing stored lets the end be stored. onTrace, when set, sees j's other
// trace stages.
func holdEnd(t *testing.T, tb *testBundle, j *broker.Job, onTrace func(stage string)) (w *worker.Worker, fetched <-chan struct{}, stored chan struct{}) {
	t.Helper()
	storing := make(chan struct{}, 1)
	stored = make(chan struct{})
	fetches := make(chan struct{}, 4)
	w = tb.start(t, worker.WithBeforeStoreDone(worker.Config{Trace: func(id, stage string) {
		switch {
		case id != j.ID:
		case stage == worker.StageFetched:
			fetches <- struct{}{}
		case onTrace != nil:
			onTrace(stage)
		}
	}}, func(id string) {
		if id == j.ID {
			storing <- struct{}{}
			<-stored
		}
	}))
	for _, c := range []<-chan struct{}{fetches, storing} {
		select {
		case <-c:
		case <-waitCtx(t).Done():
			t.Fatal("the job's first run never finished")
		}
	}
	return w, fetches, stored
}

// waitRefetched waits until fetched tells of the job's message fetched again.
func waitRefetched(t *testing.T, fetched <-chan struct{}) {
	t.Helper()
	select {
	case <-fetched:
	case <-waitCtx(t).Done():
		t.Fatal("the job's message was not delivered again")
	}
}

// redeliver NAKs the one queue delivery awaiting its ack, through the ack subject the
// server gave it: the server hands the message out again, as when its ack wait runs out.
func (tb *testBundle) redeliver(t *testing.T) {
	t.Helper()
	js, err := jetstream.New(tb.b.Conn)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctxT(t), broker.QueueStream)
	if err != nil {
		t.Fatal(err)
	}
	list := s.ListConsumers(ctxT(t))
	for info := range list.Info() {
		if info.NumAckPending != 1 {
			continue
		}
		subj := fmt.Sprintf("$JS.ACK.%s.%s.1.%d.%d.%d.0", broker.QueueStream, info.Name,
			info.Delivered.Stream, info.Delivered.Consumer, time.Now().UnixNano())
		if err := tb.b.Conn.Publish(subj, []byte("-NAK")); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := list.Err(); err != nil {
		t.Fatal(err)
	}
	t.Fatal("no queue delivery awaits its ack")
}
