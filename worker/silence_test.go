package worker_test

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// An attempt that has had no byte of answer while its target answered none of the
// polls for TargetSilence (Ollama hung as a whole) is given up long before the
// first-byte limit: the job is retried, the worker pauses until the target answers, and
// the job then runs to its end.
func TestSilentTargetAttemptIsGivenUp(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	defer release()
	inv := tb.polledInventory(t)
	var logs lockedBuffer
	w := tb.start(t, worker.Config{Inventory: inv, TargetSilence: 200 * time.Millisecond, FirstByteTimeout: time.Hour,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	job := tb.chat(t, "tiny-a", 1)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	tb.goSilent(t, inv)
	got := tb.waitState(t, job.ID, broker.StateRetrying)
	if got.Attempt != 1 || !strings.Contains(got.Error, "no answer to the target's polls") {
		t.Fatalf("retrying after attempt %d with error %q; want attempt 1 given up for the target's silence", got.Attempt, got.Error)
	}
	eventually(t, 30*time.Second, "the worker paused for the target", func() bool {
		p := w.Paused()
		return p != nil && p.Reason == broker.PauseTargetUnreachable
	})
	if err := w.TargetStall(); err == nil || !strings.Contains(err.Error(), job.ID) {
		t.Errorf("TargetStall = %v; want the silent attempt of job %s", err, job.ID)
	}
	// The operator's line names the job and its model, as the worker's other lines do.
	if line := lineWith(logs.String(), "target silent; attempt given up"); !strings.Contains(line, "job_id="+job.ID) || !strings.Contains(line, "model=tiny-a") {
		t.Errorf("the attempt given up is logged as %q; want its job and model named", line)
	}
	// Back: the stall it reported is over once the target answers, though the next
	// attempt has no answer yet.
	tb.fake.SetDown(false)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 2); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the silent stall cleared", func() bool { return w.TargetStall() == nil })
	release()
	got = tb.waitState(t, job.ID, broker.StateDone)
	if got.Attempt != 2 {
		t.Errorf("the job ended after attempt %d, want 2", got.Attempt)
	}
}

// An answer that stops mid-way while the target answers no poll either is given up
// after TargetSilence too, not after the stream idle limit: Ollama hung as a whole.
func TestSilentTargetMidAnswerIsGivenUp(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNext(1, ollamatest.StallMidStream)
	inv := tb.polledInventory(t)
	job := tb.chat(t, "tiny-a", 1)
	stream := watchStream(t, tb.b.Conn, job.ID)
	tb.start(t, worker.Config{Inventory: inv, TargetSilence: 200 * time.Millisecond, StreamIdleTimeout: time.Hour})
	select {
	case <-stream.ch: // the answer began
	case <-waitCtx(t).Done():
		t.Fatal("no frame of the answer")
	}
	tb.goSilent(t, inv)
	got := tb.waitState(t, job.ID, broker.StateRetrying)
	if got.Attempt != 1 || !strings.Contains(got.Error, "no more of the answer") {
		t.Fatalf("retrying after attempt %d with error %q; want attempt 1 given up for the target's silence mid-answer", got.Attempt, got.Error)
	}
	tb.fake.SetDown(false)
	if got := tb.waitState(t, job.ID, broker.StateDone); got.Attempt != 2 {
		t.Errorf("the job ended after attempt %d, want 2", got.Attempt)
	}
}

// A stop lets the running job finish until its deadline; a job a silent target holds is
// given up as it would be without the stop, not held to the deadline and handed back as
// one the stop cut short.
func TestSilentTargetAttemptIsGivenUpDuringAStop(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	defer release()
	inv := tb.polledInventory(t)
	w := tb.start(t, worker.Config{Inventory: inv, TargetSilence: 200 * time.Millisecond, FirstByteTimeout: time.Hour})
	job := tb.chat(t, "tiny-a", 1)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	tb.goSilent(t, inv)
	ctx, cancel := context.WithTimeout(ctxT(t), 20*time.Second)
	defer cancel()
	if err := w.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	got, _, err := tb.b.Store.Get(ctxT(t), job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != broker.StateRetrying || got.Attempt != 1 || !strings.Contains(got.Error, "no answer to the target's polls") {
		t.Fatalf("after the stop: %s, attempt %d, error %q; want retrying after the silent attempt 1", got.State, got.Attempt, got.Error)
	}
}

// A target that answers its polls is not silent, however long the answer takes (a cold
// load of a big model): the attempt runs on to its end.
func TestSlowAnswerOfAnAnsweringTargetRunsOn(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	defer release()
	var polls atomic.Int64
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: tb.target, Logger: testLogger(), Interval: 20 * time.Millisecond,
		OnPoll: func(context.Context, ollama.Snapshot) { polls.Add(1) }})
	ictx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = inv.Run(ictx) }()
	defer func() { stop(); <-done }()
	w := tb.start(t, worker.Config{Inventory: inv, TargetSilence: 50 * time.Millisecond, FirstByteTimeout: time.Hour})
	job := tb.chat(t, "tiny-a", 1)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	// Polls 20 ms apart: 15 more of them span six times the limit.
	from := polls.Load()
	eventually(t, 30*time.Second, "15 answered polls while the call waits", func() bool { return polls.Load() >= from+15 })
	if err := w.TargetStall(); err != nil {
		t.Fatalf("TargetStall = %v while the target answers its polls", err)
	}
	release()
	got := tb.waitState(t, job.ID, broker.StateDone)
	if got.Attempt != 1 {
		t.Errorf("the job ended after attempt %d, want 1: its one attempt ran on", got.Attempt)
	}
}

// With several foremen on one NATS, the job whose attempt one Mac's silent Ollama held
// is given up there and run by another Mac that has its model, while the first stays
// paused: it does not wait out the first-byte limit on the hung Mac.
func TestSilentTargetsJobRunsOnAnotherMac(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	defer release()
	inv := tb.polledInventory(t)
	wa := tb.start(t, worker.Config{Inventory: inv, TargetSilence: 200 * time.Millisecond, FirstByteTimeout: time.Hour})
	job := tb.chat(t, "tiny-a", 1)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}

	macB := ollamatest.New(t)
	targetB, err := ollama.NewClient(ollama.ClientConfig{BaseURL: macB.URL, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	other, err := broker.Open(ctxT(t), broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	tb.startOn(t, other, worker.Config{Target: targetB, IdlePoll: 20 * time.Millisecond})

	tb.goSilent(t, inv)
	got := tb.waitState(t, job.ID, broker.StateDone)
	if got.Attempt != 2 {
		t.Errorf("the job ended after attempt %d, want 2 (the first given up on the silent Mac)", got.Attempt)
	}
	if finishedCalls(macB) != 1 {
		t.Errorf("the other Mac finished %d calls, want the job's one", finishedCalls(macB))
	}
	if p := wa.Paused(); p == nil || p.Reason != broker.PauseTargetUnreachable {
		t.Errorf("the silent Mac's worker: paused %+v, want paused for its target", p)
	}
}

// A sync job whose answer had begun when its target fell silent fails (a second attempt
// cannot be spliced in): no pause follows, and the stall it reported is over all the same
// once a poll of the target is answered.
func TestSilentStallOfAFailedSyncJobEndsWhenThePollsAnswer(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNext(1, ollamatest.StallMidStream)
	inv := tb.polledInventory(t)
	j, err := tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true}, []byte(chatBody("tiny-a", 1)))
	if err != nil {
		t.Fatal(err)
	}
	stream := watchStream(t, tb.b.Conn, j.ID)
	w := tb.start(t, worker.Config{Inventory: inv, TargetSilence: 200 * time.Millisecond, StreamIdleTimeout: time.Hour})
	select {
	case <-stream.ch:
	case <-waitCtx(t).Done():
		t.Fatal("no frame of the answer")
	}
	tb.goSilent(t, inv)
	if got := tb.waitState(t, j.ID, broker.StateFailed); !strings.Contains(got.Error, "no more of the answer") {
		t.Fatalf("failed with %q; want the silence mid-answer", got.Error)
	}
	if err := w.TargetStall(); err == nil {
		t.Fatal("TargetStall() = nil right after the silent attempt")
	}
	tb.fake.SetDown(false)
	// A poll the worker began while the fake was down may be in flight: a check joins it.
	eventually(t, 10*time.Second, "a poll answered", func() bool { return inv.Refresh(ctxT(t)) == nil })
	if err := w.TargetStall(); err != nil {
		t.Errorf("TargetStall() = %v once a poll is answered", err)
	}
}

// lineWith is the first line of logs holding text, "" for none.
func lineWith(logs, text string) string {
	for l := range strings.Lines(logs) {
		if strings.Contains(l, text) {
			return l
		}
	}
	return ""
}
