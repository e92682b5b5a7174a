package worker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

func TestNewValidates(t *testing.T) {
	t.Parallel()
	_, err := worker.New(worker.Config{})
	if err == nil || !strings.Contains(err.Error(), "Store is required") || !strings.Contains(err.Error(), "Target is required") {
		t.Fatalf("New(empty) = %v", err)
	}
}

func TestManyJobsOneAtATime(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: tb.target, Logger: testLogger()})
	if err := inv.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	var jobs []*broker.Job
	for i := range 20 {
		switch i % 3 {
		case 0:
			jobs = append(jobs, tb.chat(t, "tiny-a", i))
		case 1:
			jobs = append(jobs, tb.submit(t, "tiny-b", broker.KindGenerate, fmt.Sprintf(`{"model":"tiny-b","prompt":"p%d"}`, i)))
		case 2:
			jobs = append(jobs, tb.submit(t, "tiny-embed", broker.KindEmbed, fmt.Sprintf(`{"model":"tiny-embed","input":"x%d"}`, i)))
		}
	}
	tb.start(t, worker.Config{Inventory: inv})
	for _, j := range jobs {
		got := tb.waitState(t, j.ID, broker.StateDone)
		if got.Attempt != 1 || len(got.Result) == 0 {
			t.Errorf("job %s: attempt %d, result %q", j.ID, got.Attempt, got.Result)
		}
		if _, ok := got.Artifact("result.json"); !ok {
			t.Errorf("job %s: no result.json artifact", j.ID)
		}
	}
	if n := tb.fake.MaxInFlight(); n != 1 {
		t.Errorf("MaxInFlight = %d, want 1", n)
	}
	if n := tb.fake.MaxEmbedInFlight(); n != 1 {
		t.Errorf("MaxEmbedInFlight = %d, want 1", n)
	}
	if n := len(inferenceCalls(tb.fake)); n != 20 {
		t.Errorf("%d inference calls, want 20", n)
	}
	// Drained by model: a and b are each loaded once (the embedding model never swaps).
	if n := tb.fake.Loads(); n != 2 {
		t.Errorf("Loads = %d, want 2 (one per chat model)", n)
	}
	tb.waitQueueEmpty(t)
}

// runBacklog holds a long job on tiny-a, queues the given models behind it, releases it and
// returns the order the fake served them in.
func runBacklog(t *testing.T, cfg worker.Config, behind ...string) []string {
	t.Helper()
	return runBacklogOn(t, setup(t), cfg, behind...)
}

// runBacklogOn is runBacklog on bundle tb.
func runBacklogOn(t *testing.T, tb *testBundle, cfg worker.Config, behind ...string) []string {
	t.Helper()
	return runBacklogThen(t, tb, cfg, nil, behind...)
}

// runBacklogThen is runBacklogOn calling queued, when not nil, once the jobs behind the
// long one are queued, before it is released.
func runBacklogThen(t *testing.T, tb *testBundle, cfg worker.Config, queued func(), behind ...string) []string {
	t.Helper()
	release := tb.fake.Hold("tiny-a")
	first := tb.chat(t, "tiny-a", 0)
	tb.start(t, cfg)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i, m := range behind {
		ids = append(ids, tb.chat(t, m, i+1).ID)
	}
	if queued != nil {
		queued()
	}
	release()
	tb.waitState(t, first.ID, broker.StateDone)
	for _, id := range ids {
		tb.waitState(t, id, broker.StateDone)
	}
	return inferenceCalls(tb.fake)
}

func TestDrainByModel(t *testing.T) {
	t.Parallel()
	got := runBacklog(t, worker.Config{}, "tiny-b", "tiny-a", "tiny-b", "tiny-a")
	want := []string{"tiny-a:latest", "tiny-a:latest", "tiny-a:latest", "tiny-b:latest", "tiny-b:latest"}
	if !slices.Equal(got, want) {
		t.Fatalf("served %v, want %v (A2 and A4 before B1 and B3)", got, want)
	}
}

// A worker whose host clock is ahead of the NATS server's by more than MaxWait still
// drains by model: the queue messages are stamped by the server's clock, and their ages
// are taken on it (ADR-0060). Taken on the host's clock, every job was past MaxWait the
// moment it was queued, and the worker ran them oldest first, swapping at each.
func TestDrainByModelOnAHostClockAhead(t *testing.T) {
	t.Parallel()
	ahead := brokertest.WithStore(func(c *broker.Config) { c.Now = func() time.Time { return time.Now().Add(3 * time.Minute) } })
	got := runBacklogOn(t, setup(t, ahead), worker.Config{MaxWait: time.Minute}, "tiny-b", "tiny-a", "tiny-b", "tiny-a")
	want := []string{"tiny-a:latest", "tiny-a:latest", "tiny-a:latest", "tiny-b:latest", "tiny-b:latest"}
	if !slices.Equal(got, want) {
		t.Fatalf("served %v, want %v (A2 and A4 before B1 and B3)", got, want)
	}
}

// The picks run on the NATS server's clock, which stamped the queue messages: it jumps
// three minutes on while the first job runs, so by the server's clock (the host's
// notwithstanding) A's streak, begun before the jump, has run past MaxWait, and B1,
// queued during it, was passed over past MaxWait: B1 goes first, and B's new streak goes
// on with B3. On the host's clock nothing was late, and A drained first.
func TestPicksRunOnTheServersClock(t *testing.T) {
	t.Parallel()
	var ahead atomic.Int64
	later := worker.WithServerClock(worker.Config{MaxWait: time.Minute}, func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) })
	got := runBacklogThen(t, setup(t), later, func() { ahead.Store(int64(3 * time.Minute)) }, "tiny-b", "tiny-a", "tiny-b", "tiny-a")
	want := []string{"tiny-a:latest", "tiny-b:latest", "tiny-b:latest", "tiny-a:latest", "tiny-a:latest"}
	if !slices.Equal(got, want) {
		t.Fatalf("served %v, want %v (B1 passed over past MaxWait by the server's clock, then B drained)", got, want)
	}
}

// An old backlog (every job queued an hour ago by the server's clock, long past MaxWait)
// drains in streaks of MaxConsecutive jobs, the next runner by the age of its oldest job:
// a job counts as passed over only since the current streak began. Counting a job's
// whole age, every pick found the other model's head past MaxWait and swapped to it: 13
// loads for 13 jobs, as Ollama alone would.
func TestAnOldBacklogDrainsInStreaks(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	old := worker.WithServerClock(worker.Config{MaxConsecutive: 3, MaxWait: 10 * time.Minute}, func() time.Time { return time.Now().Add(time.Hour) })
	var behind []string
	for range 6 {
		behind = append(behind, "tiny-b", "tiny-a")
	}
	got := runBacklogOn(t, tb, old, behind...)
	a, b := "tiny-a:latest", "tiny-b:latest"
	want := []string{a, a, a, b, b, b, a, a, a, b, b, b, a}
	if !slices.Equal(got, want) {
		t.Fatalf("served %v, want %v (streaks of 3)", got, want)
	}
	if n := tb.fake.Loads(); n != 5 {
		t.Errorf("Loads = %d, want 5 (one per streak)", n)
	}
}

func TestMaxConsecutiveBoundsStarvation(t *testing.T) {
	t.Parallel()
	got := runBacklog(t, worker.Config{MaxConsecutive: 2}, "tiny-b", "tiny-a", "tiny-a", "tiny-a", "tiny-a")
	want := []string{"tiny-a:latest", "tiny-a:latest", "tiny-b:latest", "tiny-a:latest", "tiny-a:latest", "tiny-a:latest"}
	if !slices.Equal(got, want) {
		t.Fatalf("served %v, want %v (B after at most 2 A jobs)", got, want)
	}
}

func TestMaxWaitBoundsStarvation(t *testing.T) {
	t.Parallel()
	// Every waiting job is "too old" at once: the worker serves strictly oldest first.
	got := runBacklog(t, worker.Config{MaxWait: time.Nanosecond}, "tiny-b", "tiny-a", "tiny-b", "tiny-a")
	want := []string{"tiny-a:latest", "tiny-b:latest", "tiny-a:latest", "tiny-b:latest", "tiny-a:latest"}
	if !slices.Equal(got, want) {
		t.Fatalf("served %v, want %v", got, want)
	}
}

func TestRetryOnConnectionError(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNext(1, ollamatest.DropConnection)
	j := tb.chat(t, "tiny-a", 1)
	states := watchStates(t, tb.b.Conn, j.ID)
	tb.start(t, worker.Config{})
	seen := states.until(t)
	got := tb.waitState(t, j.ID, broker.StateDone)
	if got.Attempt != 2 || got.Error != "" {
		t.Errorf("attempt %d error %q, want 2 and none", got.Attempt, got.Error)
	}
	if !contains(seen, broker.StateRetrying) {
		t.Errorf("states %v: no retrying", seen)
	}
	if n := len(inferenceCalls(tb.fake)); n != 2 {
		t.Errorf("%d calls, want 2", n)
	}
}

func TestHTTPErrorIsTerminal(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	j := tb.chat(t, "tiny-embed", 1) // chat on an embedding model: 400
	stream := watchStream(t, tb.b.Conn, j.ID)
	tb.start(t, worker.Config{})
	frames, final := stream.untilFinal(t)
	got := tb.waitState(t, j.ID, broker.StateFailed)
	if len(frames) != 0 {
		t.Errorf("%d frames before the failure", len(frames))
	}
	if final.Header.Get(broker.HeaderFinal) != "failed" || final.Header.Get(broker.HeaderStatus) != "400" ||
		!strings.Contains(final.Header.Get(broker.HeaderError), "does not support chat") {
		t.Errorf("final marker headers %v", final.Header)
	}
	if got.Error != final.Header.Get(broker.HeaderError) || got.Attempt != 1 {
		t.Errorf("record error %q attempt %d", got.Error, got.Attempt)
	}
	if n := len(inferenceCalls(tb.fake)); n != 1 {
		t.Errorf("%d calls, want 1 (no retry)", n)
	}
	tb.waitQueueEmpty(t)
}

func TestAttemptsExhausted(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 2 }))
	tb.fake.FailNext(10, ollamatest.DropMidStream)
	j := tb.chat(t, "tiny-a", 1)
	tb.start(t, worker.Config{})
	got := tb.waitState(t, j.ID, broker.StateFailed)
	if !strings.HasPrefix(got.Error, "attempts exhausted: ") || got.Attempt != 2 {
		t.Errorf("error %q attempt %d", got.Error, got.Attempt)
	}
	if n := len(inferenceCalls(tb.fake)); n != 2 {
		t.Errorf("%d calls, want 2", n)
	}
	tb.waitQueueEmpty(t)
}

func TestDeliveryLimitFailsJob(t *testing.T) {
	t.Parallel()
	// The store's MaxDeliver (its MaxAttempts+2 = 3) is below the worker's attempt limit,
	// as after repeated crashes: the worker fails the job on its last delivery, where a
	// hand-back would leave it to JetStream's advisory.
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 1 }))
	tb.fake.FailNext(100, ollamatest.DropConnection)
	j := tb.chat(t, "tiny-a", 1)
	tb.start(t, worker.WithMaxAttempts(worker.Config{}, 10))
	got := tb.waitState(t, j.ID, broker.StateFailed)
	if !strings.HasPrefix(got.Error, "attempts exhausted: ") {
		t.Errorf("error %q", got.Error)
	}
	if n := len(inferenceCalls(tb.fake)); n != 3 {
		t.Errorf("%d calls, want 3 (MaxDeliver)", n)
	}
	tb.waitQueueEmpty(t)
}

// A job on its last delivery whose failed state the store refuses for a while still ends
// failed and leaves the queue: JetStream delivers it no more, so the worker tries on.
func TestDeliveryLimitFailsJobOnceTheStoreTakesIt(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 1 }))
	tb.fake.FailNext(100, ollamatest.DropConnection)
	j := tb.chat(t, "tiny-a", 1)
	var refusals atomic.Int32
	tb.start(t, worker.WithEndFault(worker.WithMaxAttempts(worker.Config{}, 10), func(id string, state broker.State) error {
		if id != j.ID || state != broker.StateFailed || refusals.Add(1) > 3 {
			return nil
		}
		return fmt.Errorf("injected: %w", broker.ErrStorageFull)
	}))
	got := tb.waitState(t, j.ID, broker.StateFailed)
	if !strings.HasPrefix(got.Error, "attempts exhausted: ") || refusals.Load() < 4 {
		t.Errorf("error %q after %d tries, want attempts exhausted after four", got.Error, refusals.Load())
	}
	tb.waitQueueEmpty(t)
}

// JetStream's advisory of a queued job past its delivery limit (sent once, when a crash
// took its last delivery) ends the job failed and removes its message, even when the
// message cannot be read for a while (a timeout, a leader election): the read is tried
// on as the write is.
func TestDeliveryLimitAdvisoryFailsJob(t *testing.T) {
	t.Parallel()
	for _, refused := range []int32{0, 3} {
		t.Run(fmt.Sprintf("%d refused reads", refused), func(t *testing.T) {
			t.Parallel()
			tb := setup(t)
			release := tb.fake.Hold("tiny-a")
			running := tb.chat(t, "tiny-a", 1)
			limited := tb.chat(t, "tiny-a", 2)
			info, err := tb.b.JetStream(t).Stream(ctxT(t), broker.QueueStream)
			if err != nil {
				t.Fatal(err)
			}
			seq := info.CachedInfo().State.LastSeq // limited's message
			var reads atomic.Int32
			tb.start(t, worker.WithLimitReadFault(worker.Config{}, func(uint64) error {
				if reads.Add(1) > refused {
					return nil
				}
				return fmt.Errorf("injected: %w", broker.ErrUnavailable)
			}))
			if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
				t.Fatal(err)
			}
			// The worker runs one job; limited waits behind it, as one whose last delivery
			// went to a foreman that crashed.
			adv := fmt.Sprintf(`{"type":"io.nats.jetstream.advisory.v1.max_deliver","stream":%q,"consumer":"c","stream_seq":%d,"deliveries":3}`, broker.QueueStream, seq)
			if err := tb.b.Conn.Publish("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."+broker.QueueStream+".c", []byte(adv)); err != nil {
				t.Fatal(err)
			}
			got := tb.waitState(t, limited.ID, broker.StateFailed)
			if !strings.Contains(got.Error, "delivered 3 times") || reads.Load() != refused+1 {
				t.Errorf("error %q after %d reads, want delivered 3 times after %d", got.Error, reads.Load(), refused+1)
			}
			release()
			tb.waitState(t, running.ID, broker.StateDone)
			tb.waitQueueEmpty(t)
		})
	}
}

func TestCrashMidJobCompletesOnce(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.AckWait = time.Second }))
	release := tb.fake.Hold("tiny-a")
	j := tb.chat(t, "tiny-a", 1)

	// First foreman: runs the job, then "crashes" mid-job (its NATS server goes away).
	w1, err := worker.New(worker.Config{Store: tb.b.Store, Target: tb.target, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	done1 := make(chan error, 1)
	go func() { done1 <- w1.Run(ctx1) }()
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	tb.waitState(t, j.ID, broker.StateLoading)
	tb.b.Restart(t)
	cancel1()
	<-done1
	release()

	// Second foreman on the same data: the un-acked job comes back after AckWait.
	tb.start(t, worker.Config{})
	got := tb.waitState(t, j.ID, broker.StateDone)
	if got.Attempt != 2 {
		t.Errorf("attempt %d, want 2", got.Attempt)
	}
	tb.waitQueueEmpty(t)
	hist, err := tb.b.JobRecords(t).History(ctxT(t), "job."+j.ID)
	if err != nil {
		t.Fatal(err)
	}
	dones := 0
	for _, e := range hist {
		if rec, err := broker.DecodeJob(e.Value()); err == nil && rec.State == broker.StateDone {
			dones++
		}
	}
	if dones != 1 {
		t.Errorf("%d done records, want 1", dones)
	}
	if finished := finishedCalls(tb.fake); finished != 1 {
		t.Errorf("fake finished the job %d times, want 1 (calls %+v)", finished, tb.fake.Calls())
	}
}

func TestCancelQueuedNeverRuns(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	first := tb.chat(t, "tiny-a", 0)
	tb.start(t, worker.Config{})
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	canceled := tb.chat(t, "tiny-a", 1)
	if _, err := tb.b.Store.Cancel(ctxT(t), canceled.ID, "not needed"); err != nil {
		t.Fatal(err)
	}
	// A canceled record whose queue message is still there (as after a failed removal)
	// must be dropped without reaching the target too.
	stale := tb.chat(t, "tiny-a", 2)
	if _, _, err := tb.b.Store.Modify(ctxT(t), stale.ID, func(j *broker.Job) error {
		j.State = broker.StateCanceled
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	last := tb.chat(t, "tiny-a", 3)
	release()
	tb.waitState(t, first.ID, broker.StateDone)
	tb.waitState(t, last.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
	if n := len(inferenceCalls(tb.fake)); n != 2 {
		t.Errorf("%d calls, want 2 (canceled jobs never reach the target)", n)
	}
	for _, id := range []string{canceled.ID, stale.ID} {
		if j, _, _ := tb.b.Store.Get(ctxT(t), id); j.State != broker.StateCanceled || j.Attempt != 0 {
			t.Errorf("job %s: %s attempt %d", id, j.State, j.Attempt)
		}
	}
}

func TestCancelRunningAbortsUpstream(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	defer release()
	j := tb.chat(t, "tiny-a", 1)
	stream := watchStream(t, tb.b.Conn, j.ID)
	tb.start(t, worker.Config{})
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	tb.waitState(t, j.ID, broker.StateLoading)
	// Cancel only requests it; the worker ends the job.
	req, err := tb.b.Store.Cancel(ctxT(t), j.ID, "user")
	if err != nil {
		t.Fatal(err)
	}
	if req.State != broker.StateLoading || req.CancelRequested != "user" {
		t.Fatalf("Cancel wrote %s (request %q), want loading with the request", req.State, req.CancelRequested)
	}
	_, final := stream.untilFinal(t)
	if final.Header.Get(broker.HeaderFinal) != "canceled" || final.Header.Get(broker.HeaderError) != "user" {
		t.Errorf("final marker %v, want canceled with the reason", final.Header)
	}
	err = tb.fake.WaitFor(waitCtx(t), func(calls []ollamatest.Call) bool {
		return len(calls) == 1 && calls[0].Finished && calls[0].Canceled
	})
	if err != nil {
		t.Fatalf("fake did not see the call canceled: %+v", tb.fake.Calls())
	}
	got := tb.waitState(t, j.ID, broker.StateCanceled)
	if got.Error != "user" || got.FinishedAt == nil {
		t.Errorf("canceled record: error %q finished %v, want the reason and an end time", got.Error, got.FinishedAt)
	}
	tb.waitQueueEmpty(t)
	// The worker moved on.
	next := tb.chat(t, "tiny-b", 2)
	tb.waitState(t, next.ID, broker.StateDone)
}

func TestStopHandsBackRunningJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	j := tb.chat(t, "tiny-a", 1)
	w := tb.start(t, worker.Config{})
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	tb.waitState(t, j.ID, broker.StateLoading)
	expired, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Stop(expired); err != nil {
		t.Fatal(err)
	}
	got, _, err := tb.b.Store.Get(ctxT(t), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != broker.StateRetrying || got.Error != "foreman shutting down" || got.Attempt != 0 {
		t.Fatalf("after Stop: %s %q attempt %d", got.State, got.Error, got.Attempt)
	}
	if n, _ := tb.b.Store.QueueLen(ctxT(t)); n != 1 {
		t.Fatalf("queue holds %d, want the handed-back job", n)
	}
	err = tb.fake.WaitFor(waitCtx(t), func(calls []ollamatest.Call) bool { return len(calls) == 1 && calls[0].Canceled })
	if err != nil {
		t.Fatal("upstream request not aborted")
	}
	release()
	tb.start(t, worker.Config{})
	got = tb.waitState(t, j.ID, broker.StateDone)
	if got.Attempt != 1 {
		t.Errorf("attempt %d, want 1 (the hand-back does not count)", got.Attempt)
	}
}

// A stop's hand-back is no attempt, and on a shared NATS every foreman's deliveries count
// toward the queue's MaxDeliver: a long job cut off by one stop after another (rolling
// restarts) is requeued when a stop cuts off its last delivery, not left undelivered for
// the delivery limit to fail it unrun. Here MaxDeliver is 3 (one attempt, two spare).
func TestStopsCuttingOffEveryDeliveryDoNotFailTheJob(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 1 }))
	release := tb.fake.Hold("tiny-a")
	j := tb.chat(t, "tiny-a", 1)
	for stop := 1; stop <= tb.b.Store.Config().MaxDeliver(); stop++ {
		w := tb.start(t, worker.Config{})
		if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", stop); err != nil {
			t.Fatal(err)
		}
		expired, cancel := context.WithCancel(context.Background())
		cancel()
		if err := w.Stop(expired); err != nil {
			t.Fatal(err)
		}
		if got, _, err := tb.b.Store.Get(ctxT(t), j.ID); err != nil || got.State != broker.StateRetrying || got.Attempt != 0 {
			t.Fatalf("after stop %d: %+v, %v; want retrying, no attempt counted", stop, got, err)
		}
	}
	release()
	tb.start(t, worker.Config{})
	if got := tb.waitState(t, j.ID, broker.StateDone); got.Attempt != 1 {
		t.Errorf("done after %d attempts, want 1", got.Attempt)
	}
}

// A sync job whose caller waits on this process does not run again once the worker
// stopping cut it off (the shutdown cancels it, or a restart finds its caller gone): the
// attempt it was on is its last, and counts.
func TestStopCountsTheCutOffAttemptOfASyncJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	defer release()
	j := tb.syncJob(t, "tiny-a", tb.b.Store.BootID())
	w := tb.start(t, worker.Config{})
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	tb.waitState(t, j.ID, broker.StateLoading)
	expired, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Stop(expired); err != nil {
		t.Fatal(err)
	}
	got, _, err := tb.b.Store.Get(ctxT(t), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != broker.StateRetrying || got.Attempt != 1 || got.StartedAt == nil {
		t.Fatalf("after Stop: %s %q attempt %d started %v, want retrying, the attempt counted", got.State, got.Error, got.Attempt, got.StartedAt)
	}
}

func TestStopLetsRunningJobFinish(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	j := tb.chat(t, "tiny-a", 1)
	w := tb.start(t, worker.Config{})
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- w.Stop(waitCtx(t)) }()
	release()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	got, _, err := tb.b.Store.Get(ctxT(t), j.ID)
	if err != nil || got.State != broker.StateDone {
		t.Fatalf("after Stop: %v %v", got, err)
	}
	// A stopped worker takes nothing new.
	later := tb.chat(t, "tiny-a", 2)
	if got, _, _ := tb.b.Store.Get(ctxT(t), later.ID); got.State != broker.StateQueued {
		t.Fatalf("job after Stop: %s", got.State)
	}
}

func TestStreamFramesByteExact(t *testing.T) {
	t.Parallel()
	tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(4)})
	tests := []struct {
		name, model string
		kind        broker.Kind
		body        string
	}{
		{"chat ndjson", "tiny-a", broker.KindChat, chatBody("tiny-a", 1)},
		{"generate no stream", "tiny-a", broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","stream":false}`},
		{"openai sse", "tiny-b", broker.KindOpenAIChat, `{"model":"tiny-b","stream":true,"messages":[{"role":"user","content":"hi"}]}`},
		{"embed", "tiny-embed", broker.KindEmbed, `{"model":"tiny-embed","input":["a","b"]}`},
	}
	tb.start(t, worker.Config{})
	for _, tt := range tests {
		// What the target sends for the same request, straight.
		var want [][]byte
		wantCT, err := tb.target.Stream(ctxT(t), tt.kind.Path(), []byte(tt.body), func(f []byte) error {
			want = append(want, f)
			return nil
		})
		if err != nil {
			t.Fatalf("%s: direct: %v", tt.name, err)
		}
		// Watched before it is submitted: the running worker may finish it before a
		// later subscription, and frames are not kept.
		j := &broker.Job{ID: broker.NewID(), Model: tt.model, Kind: tt.kind}
		stream := watchStream(t, tb.b.Conn, j.ID)
		if _, err := tb.b.Store.Submit(ctxT(t), j, []byte(tt.body)); err != nil {
			t.Fatal(err)
		}
		frames, final := stream.untilFinal(t)
		if final.Header.Get(broker.HeaderFinal) != "done" || len(final.Data) != 0 {
			t.Errorf("%s: final marker %v %q", tt.name, final.Header, final.Data)
		}
		if len(frames) != len(want) {
			t.Fatalf("%s: %d frames, want %d", tt.name, len(frames), len(want))
		}
		for i := range frames {
			if !bytes.Equal(frames[i].Data, want[i]) {
				t.Errorf("%s: frame %d = %q, want %q", tt.name, i, frames[i].Data, want[i])
			}
		}
		if got := frames[0].Header.Get(broker.HeaderContentType); got != wantCT {
			t.Errorf("%s: content type %q, want %q", tt.name, got, wantCT)
		}
		rec := tb.waitState(t, j.ID, broker.StateDone)
		if tt.kind == broker.KindChat && !strings.Contains(string(rec.Result), `"done":true`) {
			t.Errorf("%s: result %s", tt.name, rec.Result)
		}
		if tt.kind == broker.KindEmbed && string(rec.Result) != string(want[0]) {
			t.Errorf("%s: result %s, want the body", tt.name, rec.Result)
		}
	}
}

func TestChatResultIsNonStreamedShape(t *testing.T) {
	t.Parallel()
	tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(6)})
	body := `{"model":"tiny-a","messages":[{"role":"user","content":"same"}]}`
	var want ollama.ChatResponse
	resp, err := tb.target.Stream(ctxT(t), "/api/chat", []byte(`{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"same"}]}`), func(f []byte) error {
		return jsonUnmarshal(f, &want)
	})
	if err != nil {
		t.Fatal(err, resp)
	}
	j := tb.submit(t, "tiny-a", broker.KindChat, body)
	states := watchStates(t, tb.b.Conn, j.ID)
	tb.start(t, worker.Config{})
	seen := states.until(t)
	if !slices.Equal(seen, []broker.State{broker.StateLoading, broker.StateWorking, broker.StateDone}) {
		t.Errorf("states %v, want loading, working, done (a swap)", seen)
	}
	rec := tb.waitState(t, j.ID, broker.StateDone)
	var got ollama.ChatResponse
	if err := jsonUnmarshal(rec.Result, &got); err != nil {
		t.Fatal(err)
	}
	if got.Message.Content != want.Message.Content || !got.Done || got.EvalCount != want.EvalCount {
		t.Errorf("result %+v, want content %q", got, want.Message.Content)
	}
	_, data, err := tb.b.Store.GetArtifact(ctxT(t), j.ID, "result.json")
	if err != nil || !bytes.Equal(data, rec.Result) {
		t.Errorf("artifact %s (%v), want the result", data, err)
	}
}

func TestStreamWithoutDoneEndsJob(t *testing.T) {
	t.Parallel()
	tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(3)})
	tb.fake.FailNext(1, ollamatest.StreamNoDone)
	j := tb.chat(t, "tiny-a", 1)
	stream := watchStream(t, tb.b.Conn, j.ID)
	tb.start(t, worker.Config{})
	frames, final := stream.untilFinal(t)
	if len(frames) != 3 || final.Header.Get(broker.HeaderFinal) != "done" {
		t.Fatalf("%d frames, final %v", len(frames), final.Header)
	}
	rec := tb.waitState(t, j.ID, broker.StateDone)
	if len(rec.Result) == 0 {
		t.Error("no result")
	}
	next := tb.chat(t, "tiny-a", 2)
	tb.waitState(t, next.ID, broker.StateDone)
}

func TestConnectionErrorAfterFramesFailsSyncJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNext(1, ollamatest.DropMidStream)
	j, err := tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true}, []byte(chatBody("tiny-a", 1)))
	if err != nil {
		t.Fatal(err)
	}
	stream := watchStream(t, tb.b.Conn, j.ID)
	tb.start(t, worker.Config{})
	frames, final := stream.untilFinal(t)
	if len(frames) == 0 || final.Header.Get(broker.HeaderFinal) != "failed" || final.Header.Get(broker.HeaderStatus) != "" {
		t.Fatalf("%d frames, final %v", len(frames), final.Header)
	}
	tb.waitState(t, j.ID, broker.StateFailed)
}

// Ollama reports an error met mid-generation as an error line in a 200 stream; the job
// failed, whatever the status said (a runner that died is retried first: ADR-0085).
func TestErrorInsideStreamFailsJob(t *testing.T) {
	t.Parallel()
	tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(3)})
	tb.fake.FailNext(1, ollamatest.StreamError("template: :1: function \"bad\" not defined"))
	j := tb.chat(t, "tiny-a", 1)
	stream := watchStream(t, tb.b.Conn, j.ID)
	tb.start(t, worker.Config{})
	frames, final := stream.untilFinal(t)
	if len(frames) != 4 || final.Header.Get(broker.HeaderFinal) != "failed" ||
		final.Header.Get(broker.HeaderError) != "template: :1: function \"bad\" not defined" {
		t.Fatalf("%d frames, final %v", len(frames), final.Header)
	}
	rec := tb.waitState(t, j.ID, broker.StateFailed)
	if rec.Error != "template: :1: function \"bad\" not defined" {
		t.Fatalf("record error %q", rec.Error)
	}
}

// A frame larger than a NATS message (a big stream:false body) goes out in pieces that
// add up to the target's bytes, and the job ends done with the whole result.
func TestLargeFrameRelayedInPieces(t *testing.T) {
	t.Parallel()
	// A server with small messages: a frame larger than one takes a few thousand tokens,
	// not the 300,000 lines a 1 MiB message would (each parsed as the answer is joined,
	// ADR-0050: a loaded machine took longer than the test's wait).
	tb := setup(t, brokertest.WithNATS(func(c *natsd.Config) { c.MaxPayload = 64 << 10 }))
	body := `{"model":"tiny-a","prompt":"big","stream":false,"options":{"num_predict":20000}}`
	resp, err := http.Post(tb.fake.URL+"/api/generate", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	want, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || len(want) <= int(tb.b.Conn.MaxPayload()) {
		t.Fatalf("direct body is %d bytes (%v); the test needs more than %d", len(want), err, tb.b.Conn.MaxPayload())
	}
	j := tb.submit(t, "tiny-a", broker.KindGenerate, body)
	stream := watchStream(t, tb.b.Conn, j.ID)
	tb.start(t, worker.Config{})
	frames, final := stream.untilFinal(t)
	if final.Header.Get(broker.HeaderFinal) != "done" || len(frames) < 2 {
		t.Fatalf("%d frames, final %v", len(frames), final.Header)
	}
	if got := joined(frames); !bytes.Equal(got, want) {
		t.Fatalf("pieces add up to %d bytes, want the target's %d", len(got), len(want))
	}
	rec := tb.waitState(t, j.ID, broker.StateDone)
	if a, ok := rec.Artifact("result.json"); !ok || a.Size != int64(len(want)) {
		t.Fatalf("result artifact %+v, want %d bytes", a, len(want))
	}
}

// While the target is unreachable the worker waits for it, and the queue view says so:
// the job whose call failed waits in the queue again, nothing runs, and the pause names
// its reason until the target answers.
func TestQueueViewShowsTheWorkerPausedForTheTarget(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.SetDown(true)
	j := tb.chat(t, "tiny-a", 1)
	w := tb.start(t, worker.Config{})
	ctx := ctxT(t)
	var v *broker.QueueView
	eventually(t, 10*time.Second, "the queue view showing the pause", func() bool {
		var err error
		v, err = w.QueueView(ctx, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return v.Paused != nil
	})
	if v.Paused.Reason != broker.PauseTargetUnreachable || v.Paused.Error == "" || v.Paused.Since.After(time.Now()) {
		t.Errorf("pause %+v, want reason %s with an error and a start", v.Paused, broker.PauseTargetUnreachable)
	}
	if v.Running != "" || len(v.Queued) != 1 || v.Queued[0].JobID != j.ID || v.Queued[0].QueuePosition != 1 {
		t.Errorf("running %q, queued %+v: want the job waiting at position 1", v.Running, v.Queued)
	}
	since := v.Paused.Since
	eventually(t, 10*time.Second, "a later view of the same pause", func() bool {
		v, _ = w.QueueView(ctx, time.Now())
		return v.Paused == nil || v.At.Sub(since) > 50*time.Millisecond
	})
	if v.Paused == nil || !v.Paused.Since.Equal(since) {
		t.Errorf("pause %+v: want it still paused since %s", v.Paused, since)
	}

	tb.fake.SetDown(false)
	tb.waitState(t, j.ID, broker.StateDone)
	eventually(t, 10*time.Second, "the pause to end", func() bool {
		v, _ = w.QueueView(ctx, time.Now())
		return v.Paused == nil
	})
}

// gatedVersion is a target whose /api/version (the worker's probe of a target it could
// not reach) waits for its gate, or for its context to end, which it reports.
type gatedVersion struct {
	ollama.Client
	calls  chan struct{}
	gate   chan struct{}
	ctxEnd chan error
}

func (g *gatedVersion) Version(ctx context.Context) (*ollama.VersionResponse, error) {
	g.calls <- struct{}{}
	select {
	case <-g.gate:
		return g.Client.Version(ctx)
	case <-ctx.Done():
		g.ctxEnd <- ctx.Err()
		return nil, ctx.Err()
	}
}

// A pause shows from the failed call on, with that call's error, not from its first
// probe's answer (which may take the probe's whole timeout); a stop ends a probe at once.
func TestPauseShowsAtOnceAndAStopEndsItsProbe(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	target := &gatedVersion{Client: tb.target, calls: make(chan struct{}, 8), gate: make(chan struct{}), ctxEnd: make(chan error, 8)}
	tb.fake.FailNext(1, ollamatest.DropConnection)
	j := tb.chat(t, "tiny-a", 1)
	w := tb.start(t, worker.Config{Target: target})
	ctx := ctxT(t)
	select {
	case <-target.calls:
	case <-ctx.Done():
		t.Fatal("the worker never probed the target")
	}
	v, err := w.QueueView(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if v.Paused == nil || v.Paused.Reason != broker.PauseTargetUnreachable || !strings.Contains(v.Paused.Error, "/api/chat") {
		t.Fatalf("pause %+v during the first probe: want %s with the chat call's error", v.Paused, broker.PauseTargetUnreachable)
	}
	if p := w.Paused(); p != v.Paused {
		t.Errorf("Paused() = %+v, the view's %+v", p, v.Paused)
	}
	if v.Running != "" || len(v.Queued) != 1 || v.Queued[0].JobID != j.ID {
		t.Errorf("running %q, queued %+v: want the job waiting", v.Running, v.Queued)
	}

	// The probe waits for its gate: a stop ends it, before its own 10 s timeout.
	sctx, cancel := context.WithTimeout(ctx, 8*time.Second)
	defer cancel()
	if err := w.Stop(sctx); err != nil || sctx.Err() != nil {
		t.Fatalf("Stop: %v, its deadline %v: the probe held the stop", err, sctx.Err())
	}
	if err := <-target.ctxEnd; !errors.Is(err, context.Canceled) {
		t.Errorf("probe ended with %v, want canceled", err)
	}
	if w.Paused() != nil {
		t.Errorf("still paused after the stop: %+v", w.Paused())
	}
}

// A pause's error is one line of bounded length, whatever the target answered.
func TestPauseErrorIsOneBoundedLine(t *testing.T) {
	html := "<html>\r\n<head><title>502 Bad Gateway</title></head>\n\t<body>\x1b[31m" + strings.Repeat("é", 400) + "</body></html>"
	got := worker.PauseError(errors.New("ollama GET /api/version: 502: " + html))
	if strings.ContainsAny(got, "\r\n\t\x1b") || len(got) > 310 || !utf8.ValidString(got) {
		t.Errorf("pause error %q (%d bytes): want one valid line of at most 300 bytes and a mark", got, len(got))
	}
	if !strings.HasPrefix(got, "ollama GET /api/version: 502: <html> <head><title>502 Bad Gateway</title></head> <body> [31mé") || !strings.HasSuffix(got, " …") {
		t.Errorf("pause error %q", got)
	}
	if got := worker.PauseError(errors.New("  short\n")); got != "short" {
		t.Errorf("pause error %q, want %q", got, "short")
	}
}

// countedVersion is a target that reports each /api/version call (the worker's probe of a
// target it could not reach) once it was answered.
type countedVersion struct {
	ollama.Client
	answered chan error
}

func (c *countedVersion) Version(ctx context.Context) (*ollama.VersionResponse, error) {
	v, err := c.Client.Version(ctx)
	c.answered <- err
	return v, err
}

// A worker paused for an unreachable target runs again as soon as it is told the target
// answers (Config.TargetBack: the inventory's poll saw it recover), not at its next
// probe, which may be 30 s away (here an hour).
func TestPausedWorkerResumesWhenTheTargetIsSeenBack(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.SetDown(true)
	target := &countedVersion{Client: tb.target, answered: make(chan error, 16)}
	back := make(chan struct{}, 1)
	j := tb.chat(t, "tiny-a", 1)
	tb.start(t, worker.WithProbeDelay(worker.Config{Target: target, TargetBack: back}, time.Hour))
	select {
	case err := <-target.answered:
		if err == nil {
			t.Fatal("the probe of a target that is down succeeded")
		}
	case <-waitCtx(t).Done():
		t.Fatal("the worker never probed the target")
	}
	tb.fake.SetDown(false)
	back <- struct{}{}
	tb.waitState(t, j.ID, broker.StateDone)
}

// A job ended by another writer while its attempt ran (here failed, as the expiry or the
// delivery-limit advisory ends one) gets the final marker its record says, not a
// cancel's: a waiting caller hears what GET /jobs/{id} says.
func TestJobEndedElsewhereWhileItRanEndsItsStreamAsItsRecord(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNext(1, ollamatest.DropConnection) // the attempt fails: the worker would retry
	j := tb.chat(t, "tiny-a", 1)
	stream := watchStream(t, tb.b.Conn, j.ID)
	tb.start(t, worker.WithBeforeRetry(worker.Config{}, func(id string) {
		if id != j.ID {
			return
		}
		if _, _, err := tb.b.Store.Modify(context.Background(), id, func(rec *broker.Job) error {
			rec.State, rec.Error = broker.StateFailed, "expired: ended elsewhere"
			return nil
		}); err != nil {
			t.Error(err)
		}
	}))
	_, final := stream.untilFinal(t)
	if final.Header.Get(broker.HeaderFinal) != string(broker.StateFailed) || final.Header.Get(broker.HeaderError) != "expired: ended elsewhere" {
		t.Fatalf("final marker %v, want the record's failed state and error", final.Header)
	}
	tb.waitQueueEmpty(t)
}

// Two models resident on the target (OLLAMA_MAX_LOADED_MODELS=2), each with a client that
// queues its next job while its last one runs: the worker goes from one to the other at
// every pick, no swap between them. A third model's job queued before still runs once it
// waited MaxWait: before, each change of runner began the streak's time afresh, and the
// job, passed over only from there, waited as long as the two clients went on.
func TestResidentModelsTakingTurnsPassAJobOverForAtMostMaxWait(t *testing.T) {
	t.Parallel()
	var tb *testBundle
	var clock atomic.Pointer[time.Time]
	var mu sync.Mutex
	var served []string
	hook := func(ctx context.Context, model string) error {
		model = strings.TrimSuffix(model, ":latest")
		mu.Lock()
		served = append(served, model)
		n := len(served)
		mu.Unlock()
		if model == "tiny-c" || n >= 30 {
			return nil
		}
		next := map[string]string{"tiny-a": "tiny-b", "tiny-b": "tiny-a"}[model]
		if _, err := tb.b.Store.Submit(ctx, &broker.Job{ID: broker.NewID(), Model: next, Kind: broker.KindChat}, []byte(chatBody(next, n))); err != nil {
			t.Errorf("submit %s: %v", next, err)
		}
		at := clock.Load().Add(time.Minute)
		clock.Store(&at)
		return nil
	}
	tb = setupFake(t, []ollamatest.Option{ollamatest.WithModels(ollamatest.Model{Name: "tiny-a"}, ollamatest.Model{Name: "tiny-b"}, ollamatest.Model{Name: "tiny-c"}),
		ollamatest.WithBeforeChat(hook)})
	tb.fake.SetResident("tiny-a", "tiny-b")
	c := tb.chat(t, "tiny-c", 0)
	tb.chat(t, "tiny-a", 0)
	now := time.Now()
	clock.Store(&now)
	cfg := worker.WithServerClock(worker.Config{MaxConsecutive: 100, MaxWait: 5 * time.Minute, Inventory: tb.polledInventory(t)},
		func() time.Time { return *clock.Load() })
	tb.start(t, cfg)
	tb.waitState(t, c.ID, broker.StateDone)
	mu.Lock()
	defer mu.Unlock()
	// a and b at 0, 1, ..., 5 minutes; at 5 minutes c had waited longer than 5.
	if i := slices.Index(served, "tiny-c"); i < 0 || i > 6 {
		t.Fatalf("served %v: tiny-c at %d, want by 6 (after at most MaxWait of the others)", served, i)
	}
}
