package worker_test

import (
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// Limits small enough for a test, large enough that the fake's answers never hit them,
// on a loaded machine too: a test whose one attempt stalls and whose next must finish
// uses them, since a limit of a few hundred milliseconds also bounds the gaps between the
// next attempt's frames, which a loaded machine makes that long on its own.
const (
	testFirstByte = time.Second
	testIdle      = time.Second
)

// waitAborted waits until n of the fake's inference calls ended with the client gone (the
// worker aborted them) and every call has ended.
func waitAborted(t *testing.T, fake *ollamatest.Server, n int) {
	t.Helper()
	err := fake.WaitFor(waitCtx(t), func(calls []ollamatest.Call) bool {
		aborted := 0
		for _, c := range calls {
			if !c.Finished {
				return false
			}
			if c.Model != "" && c.Canceled {
				aborted++
			}
		}
		return aborted == n
	})
	if err != nil {
		t.Fatalf("want %d aborted target calls: %+v", n, fake.Calls())
	}
}

// A target that takes a job and never answers: every attempt is aborted at the first-byte
// limit, the job goes retrying and then failed, the worker is reported stalled, and it
// goes on to the next job, whose success clears the stall.
func TestHungTargetFailsJobAndWorkerMovesOn(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 2 }))
	release := tb.fake.Hold("tiny-a") // tiny-a's runner hangs before its first byte
	t.Cleanup(release)
	j := tb.chat(t, "tiny-a", 1)
	states := watchStates(t, tb.b.Conn, j.ID)
	w := tb.start(t, worker.Config{FirstByteTimeout: testFirstByte, StreamIdleTimeout: testIdle})

	seen := states.until(t)
	got := tb.waitState(t, j.ID, broker.StateFailed)
	want := "attempts exhausted: target stalled: no response for " + testFirstByte.String()
	if got.Error != want || got.Attempt != 2 {
		t.Errorf("error %q attempt %d, want %q and 2", got.Error, got.Attempt, want)
	}
	if !contains(seen, broker.StateRetrying) {
		t.Errorf("states %v: no retrying", seen)
	}
	waitAborted(t, tb.fake, 2)
	stall := w.TargetStall()
	if wantStall := "stalled: no response for " + testFirstByte.String() + " on job " + j.ID; stall == nil || stall.Error() != wantStall {
		t.Errorf("TargetStall() = %v, want %q", stall, wantStall)
	}

	next := tb.chat(t, "tiny-b", 2)
	tb.waitState(t, next.ID, broker.StateDone)
	if err := w.TargetStall(); err != nil {
		t.Errorf("after a later job succeeded: TargetStall() = %v", err)
	}
	tb.waitQueueEmpty(t)
}

// A target that drips a byte at a time of a line that never ends (a slowloris) is never
// silent, yet sends nothing: each attempt is given up at the first-byte limit as a stall
// (no line came: the answer never began), the job fails once its attempts are spent, and
// the worker goes on to the next job. Counted by bytes, the limits never ran out and the
// drip held the worker for good.
func TestDrippingTargetFailsJobAndWorkerMovesOn(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 2 }))
	tb.fake.FailNext(2, ollamatest.Drip(10*time.Millisecond, "a"))
	j := tb.chat(t, "tiny-a", 1)
	w := tb.start(t, worker.Config{FirstByteTimeout: testIdle, StreamIdleTimeout: time.Hour})

	got := tb.waitState(t, j.ID, broker.StateFailed)
	want := "attempts exhausted: target stalled: no line or event with data for " + testIdle.String() + ", only a trickle of bytes"
	if got.Error != want || got.Attempt != 2 {
		t.Errorf("error %q attempt %d, want %q and 2", got.Error, got.Attempt, want)
	}
	waitAborted(t, tb.fake, 2)
	if stall := w.TargetStall(); stall == nil || !strings.Contains(stall.Error(), "only a trickle of bytes on job "+j.ID) {
		t.Errorf("TargetStall() = %v, want the trickle named", stall)
	}
	next := tb.chat(t, "tiny-b", 2)
	tb.waitState(t, next.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
}

// A stream that stops mid-way is aborted at the idle limit and retried; the next attempt
// finishes the job.
func TestStalledStreamAbortedByIdleTimeout(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNext(1, ollamatest.StallMidStream)
	j := tb.chat(t, "tiny-a", 1)
	states := watchStates(t, tb.b.Conn, j.ID)
	w := tb.start(t, worker.Config{FirstByteTimeout: time.Hour, StreamIdleTimeout: testIdle})

	var retrying *broker.Job
	for retrying == nil {
		select {
		case m := <-states.ch:
			rec, err := broker.DecodeJob(m.Data)
			if err != nil {
				t.Fatal(err)
			}
			if rec.State == broker.StateRetrying {
				retrying = rec
			}
			if rec.State.Terminal() {
				t.Fatalf("job ended %s (%s) without retrying", rec.State, rec.Error)
			}
		case <-waitCtx(t).Done():
			t.Fatal("no retrying state")
		}
	}
	if want := "target stalled: no data for " + testIdle.String(); retrying.Error != want {
		t.Errorf("retrying error %q, want %q", retrying.Error, want)
	}
	got := tb.waitState(t, j.ID, broker.StateDone)
	if got.Attempt != 2 || got.Error != "" {
		t.Errorf("attempt %d error %q", got.Attempt, got.Error)
	}
	waitAborted(t, tb.fake, 1)
	if err := w.TargetStall(); err != nil {
		t.Errorf("the retry succeeded, yet TargetStall() = %v", err)
	}
}

// A sync job whose caller already got part of the stream cannot be retried: a stall then
// fails it, as a dropped connection does.
func TestStallAfterFramesFailsSyncJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNext(1, ollamatest.StallMidStream)
	j, err := tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true}, []byte(chatBody("tiny-a", 1)))
	if err != nil {
		t.Fatal(err)
	}
	stream := watchStream(t, tb.b.Conn, j.ID)
	w := tb.start(t, worker.Config{FirstByteTimeout: time.Hour, StreamIdleTimeout: testIdle})
	frames, final := stream.untilFinal(t)
	want := "target stalled: no data for " + testIdle.String()
	if len(frames) != 2 || final.Header.Get(broker.HeaderFinal) != "failed" || final.Header.Get(broker.HeaderError) != want {
		t.Fatalf("%d frames, final %v", len(frames), final.Header)
	}
	if got := tb.waitState(t, j.ID, broker.StateFailed); got.Error != want || got.Attempt != 1 {
		t.Errorf("error %q attempt %d", got.Error, got.Attempt)
	}
	if err := w.TargetStall(); err == nil || !strings.Contains(err.Error(), j.ID) {
		t.Errorf("TargetStall() = %v", err)
	}
}

// MaxJobTime bounds an attempt however steadily the target streams: a generation that
// would go on for minutes is aborted and the job fails at once, attempts left or not (an
// overrun is usually deterministic: a retry would run as long again).
func TestMaxJobTimeAbortsSteadyStream(t *testing.T) {
	t.Parallel()
	tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(100_000), ollamatest.WithTokenDelay(2 * time.Millisecond)},
		brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 3 }))
	j := tb.chat(t, "tiny-a", 1)
	stream := watchStream(t, tb.b.Conn, j.ID)
	states := watchStates(t, tb.b.Conn, j.ID)
	// The limit runs from the attempt's start: 5 s, for the answer to have begun before it
	// however late a loaded machine makes the first frame (it came after 1 s in a stress
	// run, and the attempt ended with none).
	w := tb.start(t, worker.Config{FirstByteTimeout: time.Hour, StreamIdleTimeout: time.Hour, MaxJobTime: 5 * time.Second})
	frames, final := stream.untilFinal(t)
	want := "target too slow: the attempt ran longer than the max job time of 5s"
	if len(frames) == 0 || final.Header.Get(broker.HeaderFinal) != "failed" || final.Header.Get(broker.HeaderError) != want {
		t.Fatalf("%d frames, final %v", len(frames), final.Header)
	}
	if got := tb.waitState(t, j.ID, broker.StateFailed); got.Error != want || got.Attempt != 1 {
		t.Errorf("error %q attempt %d, want %q on attempt 1", got.Error, got.Attempt, want)
	}
	if seen := states.until(t); contains(seen, broker.StateRetrying) {
		t.Errorf("states %v: an overrun was retried", seen)
	}
	waitAborted(t, tb.fake, 1)
	if err := w.TargetStall(); err != nil {
		t.Errorf("a slow job is not a stalled target: TargetStall() = %v", err)
	}
	tb.waitQueueEmpty(t)
}

// A call that does not stream gets its first byte only with the whole answer: a
// generation longer than the first-byte limit is not a stall and finishes on its first
// attempt. (A generation its caller asked not to stream is called streamed, ADR-0050;
// a debug render is not.)
func TestNonStreamedAnswerIsNotBoundByFirstByte(t *testing.T) {
	t.Parallel()
	tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(40), ollamatest.WithTokenDelay(10 * time.Millisecond)})
	j := tb.submit(t, "tiny-a", broker.KindChat, nonStreamedBody)
	w := tb.start(t, worker.Config{FirstByteTimeout: 50 * time.Millisecond, StreamIdleTimeout: 50 * time.Millisecond})
	got := tb.waitState(t, j.ID, broker.StateDone)
	if got.Attempt != 1 {
		t.Errorf("attempt %d, want 1", got.Attempt)
	}
	if err := w.TargetStall(); err != nil {
		t.Errorf("TargetStall() = %v", err)
	}
}

// nonStreamedBody is a chat the worker calls without a stream: a debug render (the fake
// answers it as a chat).
const nonStreamedBody = `{"model":"tiny-a","stream":false,"_debug_render_only":true,"messages":[{"role":"user","content":"long"}]}`

// NonStreamTimeout bounds a call that does not stream: the job fails without a retry,
// and the target is not reported stalled.
func TestNonStreamTimeoutFailsJob(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 3 }))
	release := tb.fake.Hold("tiny-a")
	t.Cleanup(release)
	j := tb.submit(t, "tiny-a", broker.KindChat, nonStreamedBody)
	states := watchStates(t, tb.b.Conn, j.ID)
	w := tb.start(t, worker.Config{FirstByteTimeout: time.Hour, NonStreamTimeout: 100 * time.Millisecond})
	want := "target too slow: the non-streamed answer took longer than the non-stream timeout of 100ms"
	if got := tb.waitState(t, j.ID, broker.StateFailed); got.Error != want || got.Attempt != 1 {
		t.Errorf("error %q attempt %d, want %q on attempt 1", got.Error, got.Attempt, want)
	}
	if seen := states.until(t); contains(seen, broker.StateRetrying) {
		t.Errorf("states %v: the overrun was retried", seen)
	}
	waitAborted(t, tb.fake, 1)
	if err := w.TargetStall(); err != nil {
		t.Errorf("a long answer is not a stalled target: TargetStall() = %v", err)
	}
	tb.waitQueueEmpty(t)
}
