package worker_test

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A stop of one foreman of several (a shared NATS) while it keeps a job's last delivery
// for a full queue (ADR-0100): the hand-back's requeue was refused "queue full" (the old
// message still counts), the delivery NAKed, and the delivery limit's advisory failed the
// job on the foreman that fetched it next, "attempts exhausted: delivered 3 times", its
// attempt never spent. The stop puts the job's message back at its queue's end: another
// Mac runs it.
func TestAStopHandsAKeptJobOfAFullQueueToAnotherMac(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(fullQueue)) // a shared store: not the embedded server's own
	tb.fake.FailNext(1000, ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded"))
	var requeues atomic.Int32
	w := tb.start(t, worker.WithRequeueFault(worker.Config{RetryDelay: time.Millisecond}, func(string) error {
		requeues.Add(1)
		return nil
	}))
	j := tb.chat(t, "tiny-a", 1)
	eventually(t, 10*time.Second, "the job's last delivery kept for the full queue", func() bool { return requeues.Load() >= 2 })
	sctx, cancel := context.WithTimeout(ctxT(t), 100*time.Millisecond)
	_ = w.Stop(sctx)
	cancel()

	// Another foreman on the same NATS, whose Mac is not busy.
	macB := ollamatest.New(t)
	targetB, err := ollama.NewClient(ollama.ClientConfig{BaseURL: macB.URL, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	cfgB := broker.Config{Conn: tb.b.Conn}
	fullQueue(&cfgB)
	storeB, err := broker.Open(ctxT(t), cfgB)
	if err != nil {
		t.Fatal(err)
	}
	tb.startOn(t, storeB, worker.Config{Target: targetB, IdlePoll: 20 * time.Millisecond})
	if got := tb.waitEnded(t, j.ID); got.State != broker.StateDone || got.Attempt != 1 {
		t.Errorf("job ended %s (%s) at attempt %d, want done at 1 on the other Mac", got.State, got.Error, got.Attempt)
	}
}

// The stop's requeue of a kept last delivery in a full queue removes the old message
// first; should the new one be refused all the same (a submit took the freed place), the
// job, left without a message, ends failed saying so, as the advisory would have failed
// it, not retrying for nobody until its record expires.
func TestAStopThatCannotPutAKeptJobBackFailsIt(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(fullQueue))
	tb.fake.FailNext(1000, ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded"))
	var requeues atomic.Int32
	w := tb.start(t, worker.WithRequeueFault(worker.Config{RetryDelay: time.Millisecond}, func(string) error {
		requeues.Add(1)
		return broker.ErrQueueFull // every try, the one after the removal too
	}))
	j := tb.chat(t, "tiny-a", 1)
	eventually(t, 10*time.Second, "the job's last delivery kept for the full queue", func() bool { return requeues.Load() >= 2 })
	sctx, cancel := context.WithTimeout(ctxT(t), 100*time.Millisecond)
	_ = w.Stop(sctx)
	cancel()
	got := tb.waitEnded(t, j.ID)
	if got.State != broker.StateFailed || !strings.Contains(got.Error, "could not be put back in the full queue") {
		t.Errorf("job ended %s (%s), want failed, saying the stop could not put it back", got.State, got.Error)
	}
	st, err := tb.b.Store.QueueState(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Msgs != 0 {
		t.Errorf("%d queue messages left, want none", st.Msgs)
	}
}

// A kept job canceled as a stop puts it back in a full queue, after its old message's
// removal and before its new one's publish (swapBack): the canceled job was logged at
// error "job failed: a stop cut off its last delivery, and the full queue took no new
// message for it", which it did not. It is dropped, and logged as a job that ended.
func TestAKeptJobCanceledAsAStopSwapsItBackIsNotCalledFailed(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(fullQueue))
	tb.fake.FailNext(1000, ollamatest.FailStatus(http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded"))
	j := tb.chat(t, "tiny-a", 1)
	st, err := tb.b.Store.QueueState(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	var requeues atomic.Int32
	var running atomic.Pointer[worker.Worker]
	canceled := make(chan error, 1)
	logs := &logged{}
	cfg := worker.Config{RetryDelay: time.Millisecond, Logger: slog.New(logs)}
	w := tb.start(t, worker.WithRequeueFault(cfg, func(id string) error {
		requeues.Add(1)
		w := running.Load()
		if w == nil || !w.Stopping() {
			return broker.ErrQueueFull
		}
		if _, queued, err := tb.b.Store.Queued(ctxT(t), st.LastSeq); err != nil || queued {
			return broker.ErrQueueFull // giveBack's requeue, before the removal
		}
		_, err := tb.b.Store.Cancel(ctxT(t), id, "not wanted")
		canceled <- err
		return nil
	}))
	running.Store(w)
	eventually(t, 10*time.Second, "the job's last delivery kept for the full queue", func() bool { return requeues.Load() >= 2 })
	sctx, cancel := context.WithTimeout(ctxT(t), 100*time.Millisecond)
	_ = w.Stop(sctx)
	cancel()
	if err := <-canceled; err != nil {
		t.Fatal(err)
	}
	if got := tb.waitEnded(t, j.ID); got.State != broker.StateCanceled {
		t.Errorf("job ended %s (%s), want canceled", got.State, got.Error)
	}
	if n := logs.count("ERROR job failed"); n != 0 {
		t.Errorf("a canceled job logged as failed by the stop: %s", logs)
	}
	if st, err := tb.b.Store.QueueState(ctxT(t)); err != nil || st.Msgs != 0 {
		t.Errorf("%d queue messages left (%v), want none", st.Msgs, err)
	}
}
