package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A job that runs longer than the job TTL keeps its record (the worker refreshes it) and
// ends done with its result, although its queue message expires under it.
func TestJobLongerThanTTLKeepsRecordAndResult(t *testing.T) {
	t.Parallel()
	// A running job's record is offered to Refresh every eighth of the TTL and rewritten
	// once 3/8 of it old, so it is never older than half the TTL; what is left before the
	// record counts as a dead run's (3/4, DeadRunAge) or expires (the TTL) is what a stall
	// of the machine may take. With a TTL of 6 s the first was 1.5 s, and the test failed
	// once under CPU stress; 12 s double each margin.
	const ttl = 12 * time.Second
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) {
		c.JobTTL = ttl
		c.AckWait = 3 * time.Second
	}))
	release := tb.fake.Hold("tiny-a")
	defer release()
	j := tb.chat(t, "tiny-a", 1)
	submitted := time.Now()
	tb.start(t, worker.Config{})
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	started := tb.waitState(t, j.ID, broker.StateLoading)
	_, rev0, err := tb.b.Store.Get(ctxT(t), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Hold the job past twice the TTL and until JetStream has dropped its queue message
	// (MaxAge = TTL); the record must be there all along, unchanged but for its revision.
	var rev uint64
	eventually(t, 2*ttl+30*time.Second, "queue message dropped after twice the TTL", func() bool {
		rec, r, err := tb.b.Store.Get(ctxT(t), j.ID)
		rev = r
		if err != nil {
			t.Fatalf("running job's record after %v: %v", time.Since(submitted).Round(time.Millisecond), err)
		}
		if rec.State != started.State || !rec.At.Equal(started.At) || rec.Attempt != started.Attempt {
			t.Fatalf("record changed while held: %+v, was %+v", rec, started)
		}
		n, err := tb.b.Store.QueueLen(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		return n == 0 && time.Since(submitted) > 2*ttl
	})
	if rev <= rev0 {
		t.Fatalf("record never rewritten (revision %d)", rev)
	}
	release()
	got := tb.waitState(t, j.ID, broker.StateDone)
	if len(got.Result) == 0 {
		t.Fatal("done job has no result")
	}
	if _, data, err := tb.b.Store.GetArtifact(ctxT(t), j.ID, "result.json"); err != nil || len(data) == 0 {
		t.Fatalf("result artifact: %d bytes, %v", len(data), err)
	}
	if got.Attempt != 1 {
		t.Errorf("attempt %d, want 1", got.Attempt)
	}
}

// A job whose run outlived the TTL, and with it its queue message, still gets its next
// attempt when the target drops the connection: the worker requeues it.
func TestRetryAfterQueueMessageExpired(t *testing.T) {
	t.Parallel()
	const ttl = 6 * time.Second // as in TestJobLongerThanTTLKeepsRecordAndResult
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) {
		c.JobTTL = ttl
		c.AckWait = 3 * time.Second
	}))
	tb.fake.FailNext(1, ollamatest.DropMidStream)
	release := tb.fake.Hold("tiny-a")
	defer release()
	j := tb.chat(t, "tiny-a", 1)
	tb.start(t, worker.Config{})
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	tb.waitQueueEmpty(t) // JetStream dropped the running job's message at MaxAge
	release()
	got := tb.waitState(t, j.ID, broker.StateDone)
	if got.Attempt != 2 {
		t.Errorf("attempt %d, want 2", got.Attempt)
	}
	tb.waitQueueEmpty(t)
}

// A finished job whose result and terminal state take longer to store than the queue's
// ack wait (a slow or failing store) is kept in progress until it is acked: JetStream
// does not hand its message out again meanwhile, and the job runs once. Async and sync
// jobs store their end in the background after their answer went out.
func TestFinishingJobIsKeptInProgress(t *testing.T) {
	t.Parallel()
	const ackWait = 3 * time.Second // its in-progress ticks, a second apart, outlast a stall of the machine
	for _, isSync := range []bool{false, true} {
		t.Run(fmt.Sprintf("sync=%v", isSync), func(t *testing.T) {
			t.Parallel()
			tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.AckWait = ackWait }))
			j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: isSync}
			var fetched atomic.Int32
			held, release := make(chan time.Time, 1), make(chan struct{})
			cfg := worker.WithBeforeStoreDone(worker.Config{Trace: func(id, stage string) {
				if id == j.ID && stage == worker.StageFetched {
					fetched.Add(1)
				}
			}}, func(id string) {
				if id == j.ID {
					held <- time.Now()
					<-release
				}
			})
			tb.start(t, cfg)
			var once sync.Once
			t.Cleanup(func() { once.Do(func() { close(release) }) })
			if _, err := tb.b.Store.Submit(ctxT(t), j, []byte(chatBody("tiny-a", 1))); err != nil {
				t.Fatal(err)
			}
			var since time.Time
			select {
			case since = <-held:
			case <-waitCtx(t).Done():
				t.Fatal("the job's end was never stored")
			}
			// Held two ack waits: unkept, the message comes back after one.
			eventually(t, 30*time.Second, "two ack waits with the end held", func() bool {
				if n := fetched.Load(); n != 1 {
					t.Fatalf("the job's message was delivered %d times while its end was stored", n)
				}
				return time.Since(since) > 2*ackWait
			})
			once.Do(func() { close(release) })
			tb.waitState(t, j.ID, broker.StateDone)
			tb.waitQueueEmpty(t)
			if n := fetched.Load(); n != 1 {
				t.Errorf("delivered %d times, want 1", n)
			}
			if finished := finishedCalls(tb.fake); finished != 1 {
				t.Errorf("fake finished %d calls, want 1", finished)
			}
		})
	}
}

// When a finished job's result cannot be stored for longer than a terminal write tries,
// the job is not run again: a sync job's caller already has the answer, an async job's is
// held by the worker (ADR-0058). The write goes on, its message kept, until the store
// takes it.
func TestJobWhoseResultCannotBeStored(t *testing.T) {
	for _, isSync := range []bool{true, false} {
		t.Run(map[bool]string{true: "sync", false: "async"}[isSync], func(t *testing.T) {
			var failing atomic.Bool
			failing.Store(true)
			var tries, fetched atomic.Int32
			tb := setupFake(t, nil)
			job := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: isSync}
			cfg := worker.WithDoneFault(worker.Config{Trace: func(id, stage string) {
				if id == job.ID && stage == worker.StageFetched {
					fetched.Add(1)
				}
			}}, func(id string) error {
				if id != job.ID || !failing.Load() {
					return nil
				}
				tries.Add(1)
				return errStoreDown
			})
			tb.start(t, cfg)
			watch := watchStream(t, tb.b.Conn, job.ID)
			if _, err := tb.b.Store.Submit(ctxT(t), job, []byte(chatBody("tiny-a", 1))); err != nil {
				t.Fatal(err)
			}
			if _, final := watch.untilFinal(t); final.Header.Get(broker.HeaderFinal) != string(broker.StateDone) {
				t.Fatalf("final marker %v, want done", final.Header)
			}
			eventually(t, 10*time.Second, "three tries to store the result", func() bool { return tries.Load() >= 3 })
			failing.Store(false)
			tb.waitState(t, job.ID, broker.StateDone)
			tb.waitQueueEmpty(t)
			if runs, calls := fetched.Load(), finishedCalls(tb.fake); runs != 1 || calls != 1 {
				t.Errorf("job delivered %d times and answered by the target %d times, want once", runs, calls)
			}
		})
	}
}

// A sync job that fails after its caller was told (the target refused it) is not run
// again when its failed state cannot be stored: the worker tries on until the store
// takes it, as for a result. An async job is handed back and runs again, as before.
func TestFailedJobWhoseEndCannotBeStored(t *testing.T) {
	for _, isSync := range []bool{true, false} {
		t.Run(map[bool]string{true: "sync", false: "async"}[isSync], func(t *testing.T) {
			var failing atomic.Bool
			failing.Store(true)
			var tries, fetched atomic.Int32
			tb := setupFake(t, nil)
			tb.fake.FailNext(1, ollamatest.FailStatus(400, "fake: refused"))
			job := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: isSync}
			cfg := worker.WithEndFault(worker.Config{Trace: func(id, stage string) {
				if id == job.ID && stage == worker.StageFetched {
					fetched.Add(1)
				}
			}}, func(id string, state broker.State) error {
				if id != job.ID || state != broker.StateFailed || !failing.Load() {
					return nil
				}
				tries.Add(1)
				return errStoreDown
			})
			tb.start(t, cfg)
			watch := watchStream(t, tb.b.Conn, job.ID)
			if _, err := tb.b.Store.Submit(ctxT(t), job, []byte(chatBody("tiny-a", 1))); err != nil {
				t.Fatal(err)
			}
			if _, final := watch.untilFinal(t); final.Header.Get(broker.HeaderFinal) != string(broker.StateFailed) {
				t.Fatalf("final marker %v, want failed", final.Header)
			}
			want := broker.StateDone // the async job's second run is not refused
			if isSync {
				eventually(t, 10*time.Second, "three tries to store the failed state", func() bool { return tries.Load() >= 3 })
				failing.Store(false)
				want = broker.StateFailed
			}
			tb.waitState(t, job.ID, want)
			tb.waitQueueEmpty(t)
			runs, calls := fetched.Load(), len(inferenceCalls(tb.fake))
			if isSync && (runs != 1 || calls != 1) {
				t.Errorf("sync job delivered %d times and sent to the target %d times, want once", runs, calls)
			}
			if !isSync && (runs < 2 || calls < 2) {
				t.Errorf("async job delivered %d times and sent to the target %d times, want it run again", runs, calls)
			}
		})
	}
}

// errStoreDown is an injected failure of a store that refuses writes for now.
var errStoreDown = fmt.Errorf("injected store failure: %w", broker.ErrUnavailable)

// A sync job's end that fails to store for good (not a store refusing for now) does not
// hold the worker until it stops: the job is handed back as before, and the jobs behind
// it run.
func TestAnsweredSyncJobWhoseEndCanNeverBeStored(t *testing.T) {
	var fetched atomic.Int32
	tb := setupFake(t, nil)
	tb.fake.FailNext(1, ollamatest.FailStatus(400, "fake: refused"))
	job := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true}
	cfg := worker.WithEndFault(worker.Config{Trace: func(id, stage string) {
		if id == job.ID && stage == worker.StageFetched {
			fetched.Add(1)
		}
	}}, func(id string, state broker.State) error {
		if id == job.ID && fetched.Load() == 1 {
			return errors.New("injected failure that no try gets past")
		}
		return nil
	})
	tb.start(t, cfg)
	if _, err := tb.b.Store.Submit(ctxT(t), job, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	next := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	if _, err := tb.b.Store.Submit(ctxT(t), next, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	tb.waitState(t, next.ID, broker.StateDone)
	tb.waitState(t, job.ID, broker.StateDone) // its second run is not refused
	if n := fetched.Load(); n != 2 {
		t.Errorf("sync job delivered %d times, want twice (handed back once)", n)
	}
}

// A target that answers a failure with a body of a megabyte fails the job with the start
// of it: the whole would fit neither the record nor the final marker, and the job would
// go back to run again.
func TestFailureWithAHugeMessageEndsTheJob(t *testing.T) {
	tb := setupFake(t, nil)
	huge := strings.Repeat("é", 1<<19) // a megabyte, two bytes a character
	tb.fake.FailNext(1, ollamatest.FailStatus(400, huge))
	tb.start(t, worker.Config{})
	job := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true}
	watch := watchStream(t, tb.b.Conn, job.ID)
	if _, err := tb.b.Store.Submit(ctxT(t), job, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	_, final := watch.untilFinal(t)
	if final.Header.Get(broker.HeaderFinal) != string(broker.StateFailed) {
		t.Fatalf("final marker %v, want failed", final.Header)
	}
	rec := tb.waitState(t, job.ID, broker.StateFailed)
	if len(rec.Error) > 5<<10 || !strings.Contains(rec.Error, "éééé") || !utf8.ValidString(rec.Error) || !strings.Contains(rec.Error, "truncated") {
		t.Errorf("record error of %d bytes (%.20q…), want the start of the message, cut and marked", len(rec.Error), rec.Error)
	}
	tb.waitQueueEmpty(t)
	if n := len(inferenceCalls(tb.fake)); n != 1 {
		t.Errorf("target called %d times, want once", n)
	}
}

// A worker stopping while a sync job's result still cannot be stored stops: the write
// ends and the message goes back (the job's next delivery, in a process without its
// caller, cancels it unrun), and the log says so, not that the job runs again.
func TestStopWhileASyncResultCannotBeStored(t *testing.T) {
	var tries atomic.Int32
	tb := setupFake(t, nil)
	job := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true, Gateway: tb.b.Store.BootID()}
	var logs lockedBuffer
	w := tb.start(t, worker.WithDoneFault(worker.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))}, func(id string) error {
		if id != job.ID {
			return nil
		}
		tries.Add(1)
		return errStoreDown
	}))
	if _, err := tb.b.Store.Submit(ctxT(t), job, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "two tries to store the result", func() bool { return tries.Load() >= 2 })
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = w.Stop(ctx)
	}()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return while the result could not be stored")
	}
	if rec, _, err := tb.b.Store.Get(ctxT(t), job.ID); err != nil || rec.State.Terminal() {
		t.Fatalf("record after the stop: %+v, %v; want it not ended", rec, err)
	}
	if out := logs.String(); strings.Contains(out, "job will run again") || !strings.Contains(out, "canceled unrun") {
		t.Errorf("log:\n%s\nwant the job's message said to go back to be canceled unrun, not to run again", out)
	}
}

// An answered sync job whose record is gone (purged) when its result is stored is not
// tried on until the worker stops: no try brings the record back, and its message goes
// back at once, to be dropped for want of a record. On a shared store too: there a
// "not found" is the stream leader's word, not a replica's behind by a write.
func TestAnsweredSyncJobWhoseRecordIsGone(t *testing.T) {
	for _, store := range []struct {
		name string
		opts []brokertest.Option
	}{{"own store", []brokertest.Option{exclusive}}, {"shared store", nil}} {
		t.Run(store.name, func(t *testing.T) {
			var fetched atomic.Int32
			tb := setupFake(t, nil, store.opts...)
			job := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true}
			cfg := worker.WithBeforeStoreDone(worker.Config{Trace: func(id, stage string) {
				if id == job.ID && stage == worker.StageFetched {
					fetched.Add(1)
				}
			}}, func(id string) {
				if id == job.ID {
					if err := tb.b.JobRecords(t).Purge(ctxT(t), "job."+id); err != nil {
						t.Error(err)
					}
				}
			})
			tb.start(t, cfg)
			if _, err := tb.b.Store.Submit(ctxT(t), job, []byte(chatBody("tiny-a", 1))); err != nil {
				t.Fatal(err)
			}
			// Trying on, the worker would hold the message until it stops.
			eventually(t, 10*time.Second, "the message handed back once its record was found gone", func() bool {
				return fetched.Load() >= 2
			})
			tb.waitQueueEmpty(t)
			if calls := finishedCalls(tb.fake); calls != 1 {
				t.Errorf("target answered %d times, want once", calls)
			}
		})
	}
}

// A finished job whose end waits behind another job's (the background ends run one at a
// time, and a sync job's result write may go on until the store takes it) keeps its
// message in progress while it waits: otherwise, its ack wait over, another worker runs
// it again.
func TestFinishedJobWaitingBehindAnotherEndIsKeptInProgress(t *testing.T) {
	const ackWait = 3 * time.Second // its in-progress ticks, a second apart, outlast a stall of the machine
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.AckWait = ackWait }))
	first := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true}
	second := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true}
	var failing atomic.Bool
	failing.Store(true)
	var tries, fetched atomic.Int32 // the first job's tries to store its result; deliveries of the second
	trace := func(id, stage string) {
		if id == second.ID && stage == worker.StageFetched {
			fetched.Add(1)
		}
	}
	tb.start(t, worker.WithDoneFault(worker.Config{Trace: trace}, func(id string) error {
		if id != first.ID || !failing.Load() {
			return nil
		}
		tries.Add(1)
		return errStoreDown
	}))
	t.Cleanup(func() { failing.Store(false) })
	watch := watchStream(t, tb.b.Conn, second.ID)
	if _, err := tb.b.Store.Submit(ctxT(t), first, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the first job's result write failing", func() bool { return tries.Load() >= 1 })
	if _, err := tb.b.Store.Submit(ctxT(t), second, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	if _, final := watch.untilFinal(t); final.Header.Get(broker.HeaderFinal) != string(broker.StateDone) {
		t.Fatalf("second job's final marker %v, want done", final.Header)
	}
	// The second job answered, its end waiting behind the first's. Another worker on the
	// same store would take its message once its ack wait ran out.
	tb.start(t, worker.Config{Trace: trace})
	since := time.Now()
	eventually(t, 30*time.Second, "two ack waits with the second job's end waiting", func() bool {
		if n := fetched.Load(); n != 1 {
			t.Fatalf("the second job's message was delivered %d times while its end waited", n)
		}
		return time.Since(since) > 2*ackWait
	})
	failing.Store(false)
	tb.waitState(t, first.ID, broker.StateDone)
	tb.waitState(t, second.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
	if calls := finishedCalls(tb.fake); calls != 2 {
		t.Errorf("target answered %d calls, want 2 (each job once)", calls)
	}
}

// A sync job that failed while its failed state cannot be stored is kept in progress as
// the write goes on: another worker does not take it when its ack wait runs out.
func TestFailedSyncJobWhoseEndWaitsIsKeptInProgress(t *testing.T) {
	const ackWait = 3 * time.Second // its in-progress ticks, a second apart, outlast a stall of the machine
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.AckWait = ackWait }))
	tb.fake.FailNext(1, ollamatest.FailStatus(400, "fake: refused"))
	job := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true}
	var failing atomic.Bool
	failing.Store(true)
	var tries, fetched atomic.Int32
	trace := func(id, stage string) {
		if id == job.ID && stage == worker.StageFetched {
			fetched.Add(1)
		}
	}
	tb.start(t, worker.WithEndFault(worker.Config{Trace: trace}, func(id string, state broker.State) error {
		if id != job.ID || !failing.Load() {
			return nil
		}
		tries.Add(1)
		return errStoreDown
	}))
	t.Cleanup(func() { failing.Store(false) })
	if _, err := tb.b.Store.Submit(ctxT(t), job, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the failed state's write failing", func() bool { return tries.Load() >= 1 })
	tb.start(t, worker.Config{Trace: trace})
	since := time.Now()
	eventually(t, 30*time.Second, "two ack waits with the failed state unstored", func() bool {
		if n := fetched.Load(); n != 1 {
			t.Fatalf("the job's message was delivered %d times while its failed state waited", n)
		}
		return time.Since(since) > 2*ackWait
	})
	failing.Store(false)
	tb.waitState(t, job.ID, broker.StateFailed)
	tb.waitQueueEmpty(t)
	if n := len(inferenceCalls(tb.fake)); n != 1 {
		t.Errorf("target called %d times, want once", n)
	}
}

// Run returns when its ctx ends, without Stop, while a sync job's result still cannot be
// stored and another finished job waits behind its end: the end of Run stops the write as
// Stop does.
func TestRunEndsWhileASyncResultCannotBeStored(t *testing.T) {
	var tries atomic.Int32
	tb := setupFake(t, nil)
	job := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true}
	next := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true}
	w, err := worker.New(worker.WithDoneFault(worker.Config{Store: tb.b.Store, Target: tb.target, Logger: testLogger(), RetryDelay: 5 * time.Millisecond},
		func(id string) error {
			if id != job.ID {
				return nil
			}
			tries.Add(1)
			return errStoreDown
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx) }()
	watch := watchStream(t, tb.b.Conn, next.ID)
	if _, err := tb.b.Store.Submit(ctxT(t), job, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "two tries to store the result", func() bool { return tries.Load() >= 2 })
	if _, err := tb.b.Store.Submit(ctxT(t), next, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
	watch.untilFinal(t) // answered; its end waits behind the first job's
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its ctx ended while a result could not be stored")
	}
}

// A target answering without end (or more than the answer bound) fails the job, once,
// when the bound is passed: the worker keeps an attempt's frames for its result, and
// would fill its memory; another attempt would answer the same.
func TestAnswerPastTheBoundFailsTheJob(t *testing.T) {
	for _, stream := range []bool{true, false} {
		t.Run(map[bool]string{true: "streamed", false: "whole"}[stream], func(t *testing.T) {
			tb := setupFake(t, nil, brokertest.WithStore(func(c *broker.Config) { c.MaxAnswer = 64 << 10 }))
			tb.start(t, worker.Config{})
			job := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
			watch := watchStream(t, tb.b.Conn, job.ID)
			body := fmt.Sprintf(`{"model":"tiny-a","messages":[{"role":"user","content":"go on"}],"stream":%v,"options":{"num_predict":40000}}`, stream)
			if _, err := tb.b.Store.Submit(ctxT(t), job, []byte(body)); err != nil {
				t.Fatal(err)
			}
			if _, final := watch.untilFinal(t); final.Header.Get(broker.HeaderFinal) != string(broker.StateFailed) {
				t.Fatalf("final marker %v, want failed", final.Header)
			}
			rec := tb.waitState(t, job.ID, broker.StateFailed)
			if !strings.Contains(rec.Error, "answer too large") || rec.Attempt != 1 {
				t.Errorf("record: attempt %d, error %q; want the first attempt failed for its answer's size", rec.Attempt, rec.Error)
			}
			tb.waitQueueEmpty(t)
			if n := len(inferenceCalls(tb.fake)); n != 1 {
				t.Errorf("target called %d times, want once", n)
			}
		})
	}
}

// A non-streamed chat or generate whose whole answer comes in one line (the final one)
// counts that line once against the answer bound: it was counted as the last line, again
// as the final one and a third time for its text, so an answer of a third of the bound
// failed as too large.
func TestAnswerInOneFinalLineIsCountedOnce(t *testing.T) {
	const limit = 64 << 10
	text := strings.Repeat("x", limit*5/8) // over a third and half of the bound, with room for the rest of the line
	for _, c := range []struct {
		kind broker.Kind
		body string
		line string
		text func(res []byte) string
	}{
		{broker.KindChat, `{"model":"tiny-a","messages":[{"role":"user","content":"long"}],"stream":false}`,
			`{"model":"tiny-a","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"` + text + `"},"done":true,"done_reason":"stop"}`,
			func(res []byte) string {
				var r struct{ Message struct{ Content string } }
				_ = json.Unmarshal(res, &r)
				return r.Message.Content
			}},
		{broker.KindGenerate, `{"model":"tiny-a","prompt":"long","stream":false}`,
			`{"model":"tiny-a","created_at":"2026-01-01T00:00:00Z","response":"` + text + `","done":true,"done_reason":"stop"}`,
			func(res []byte) string {
				var r struct{ Response string }
				_ = json.Unmarshal(res, &r)
				return r.Response
			}},
	} {
		t.Run(string(c.kind), func(t *testing.T) {
			t.Parallel()
			tb := setupFake(t, nil, brokertest.WithStore(func(c *broker.Config) { c.MaxAnswer = limit }))
			// Ollama streams (the worker calls it streamed, ADR-0050) one line: the final one.
			tb.fake.FailNext(1, ollamatest.BadAnswer(ollama.ContentTypeNDJSON, c.line+"\n"))
			tb.start(t, worker.Config{})
			job := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: c.kind}
			if _, err := tb.b.Store.Submit(ctxT(t), job, []byte(c.body)); err != nil {
				t.Fatal(err)
			}
			rec := tb.waitState(t, job.ID, broker.StateDone)
			_, res, err := tb.b.Store.GetArtifact(ctxT(t), job.ID, broker.ResultArtifact)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.text(res); got != text {
				t.Errorf("result holds %d bytes of text, want the line's %d (attempt %d)", len(got), len(text), rec.Attempt)
			}
		})
	}
}

// A non-streamed chat whose target streams blank lines after its first one (a proxy's
// keep-alive, a hostile target) counts them against the answer bound, as a streamed one
// does: they were not counted, so an endless stream of them, each byte within the idle
// limit, held the worker for good. Error lines end the answer at the first (ADR-0135).
func TestBlankAndErrorLinesCountAgainstTheAnswerBound(t *testing.T) {
	const limit = 64 << 10
	line := `{"model":"tiny-a","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"hi"},"done":false}` + "\n"
	for name, filler := range map[string]string{"blank": " \n", "error": `{"error":"x"}` + "\n"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tb := setupFake(t, nil, brokertest.WithStore(func(c *broker.Config) { c.MaxAnswer = limit }))
			tb.fake.FailNext(1, ollamatest.BadAnswer(ollama.ContentTypeNDJSON, line+strings.Repeat(filler, limit/len(filler)+1)))
			tb.start(t, worker.Config{})
			job := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
			body := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":false}`
			if _, err := tb.b.Store.Submit(ctxT(t), job, []byte(body)); err != nil {
				t.Fatal(err)
			}
			rec := tb.waitEnded(t, job.ID)
			want := "answer too large"
			if name == "error" {
				want = "x" // the first error line's, where the answer ended
			}
			if rec.State != broker.StateFailed || !strings.Contains(rec.Error, want) {
				t.Errorf("record: %s, error %q; want failed with %q", rec.State, rec.Error, want)
			}
		})
	}
}

// An async job whose result (too large to keep in its record) cannot be stored keeps it
// while the store refuses, and stores it then, rather than end done with its answer lost
// or run again (ADR-0058); it fails, saying why, when the write can never succeed; a sync
// job, whose caller has the answer, ends done without it.
func TestJobWhoseResultArtifactCannotBeStored(t *testing.T) {
	for _, c := range []struct {
		name   string
		sync   bool
		fault  error
		faults int32 // the result writes that fail
	}{
		{"sync", true, errStoreDown, 1},
		{"async store refusing", false, errStoreDown, 3},
		{"async write failing for good", false, errors.New("injected failure that no try gets past"), 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			var fetched, faults atomic.Int32
			tb := setupFake(t, nil)
			job := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: c.sync}
			cfg := worker.WithResultFault(worker.Config{Trace: func(id, stage string) {
				if id == job.ID && stage == worker.StageFetched {
					fetched.Add(1)
				}
			}}, func(id string) error {
				if id != job.ID || faults.Load() >= c.faults {
					return nil
				}
				faults.Add(1)
				return c.fault
			})
			tb.start(t, cfg)
			// A result over the record's inline limit goes to the object store.
			body := `{"model":"tiny-a","messages":[{"role":"user","content":"long"}],"options":{"num_predict":20000}}`
			if _, err := tb.b.Store.Submit(ctxT(t), job, []byte(body)); err != nil {
				t.Fatal(err)
			}
			want := broker.StateDone
			if c.fault != errStoreDown {
				want = broker.StateFailed
			}
			// A 20,000-token answer: 2 minutes, as TestLargeResultStoredAsObject's (the
			// run's end is checked, not its speed).
			rec := tb.waitStateWithin(t, job.ID, want, 2*time.Minute)
			tb.waitQueueEmpty(t)
			if faults.Load() != c.faults {
				t.Fatalf("the result write failed %d times, want %d (the result kept inline?)", faults.Load(), c.faults)
			}
			_, stored := rec.Artifact(broker.ResultArtifact)
			runs, calls := fetched.Load(), finishedCalls(tb.fake)
			switch {
			case runs != 1 || calls != 1:
				t.Errorf("delivered %d times and answered by the target %d times, want once", runs, calls)
			case c.sync && (stored || len(rec.Artifacts) != 0):
				t.Errorf("sync job: result stored, or artifacts %+v listed; want it done without any", rec.Artifacts)
			case !c.sync && want == broker.StateDone && !stored:
				t.Errorf("async job: result not stored")
			case want == broker.StateFailed && !strings.Contains(rec.Error, "store the result: injected failure"):
				t.Errorf("async job: error %q; want it failed, saying why", rec.Error)
			}
		})
	}
}

// A non-streamed OpenAI chat whose target streams tiny SSE events (each kept for the
// assembly) counts each as at least MinFrameCost bytes: 2,000 events of 10 bytes pass a
// 64 KiB bound by their number, though their bytes are under a third of it.
func TestTinyEventsCountAgainstTheAnswerBound(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	first := `data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"tiny-a","choices":[{"index":0,"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}` + "\n\n"
	tb := setupFake(t, nil, brokertest.WithStore(func(c *broker.Config) { c.MaxAnswer = limit }))
	tb.fake.FailNext(1, ollamatest.BadAnswer(ollama.ContentTypeSSE, first+strings.Repeat("data: {}\n\n", 2000)+"data: [DONE]\n\n"))
	tb.start(t, worker.Config{})
	job := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindOpenAIChat}
	body := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`
	if _, err := tb.b.Store.Submit(ctxT(t), job, []byte(body)); err != nil {
		t.Fatal(err)
	}
	rec := tb.waitEnded(t, job.ID)
	if rec.State != broker.StateFailed || !strings.Contains(rec.Error, "answer too large") {
		t.Errorf("record: %s, error %q; want failed for its answer's size", rec.State, rec.Error)
	}
}
