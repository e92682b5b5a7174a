package worker_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// otherMac starts a second worker, as another foreman on the same NATS, in front of a
// fake Ollama of its own (tiny-a and tiny-b) whose model calls are held until the
// returned release.
func (tb *testBundle) otherMac(t *testing.T, hold string) (fake *ollamatest.Server, store *broker.Store, release func()) {
	t.Helper()
	fake = ollamatest.New(t)
	release = fake.Hold(hold)
	t.Cleanup(release)
	target, err := ollama.NewClient(ollama.ClientConfig{BaseURL: fake.URL, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	store, err = broker.Open(ctxT(t), broker.Config{Conn: tb.b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	tb.startOn(t, store, worker.Config{Target: target, IdlePoll: 20 * time.Millisecond})
	return fake, store, release
}

// offeredElsewhere is Config.Elsewhere for a Mac whose models another live Mac has.
func offeredElsewhere(context.Context, string) bool { return true }

// enqueuedAt is the NATS server's stamp of job id's queue message.
func (tb *testBundle) enqueuedAt(t *testing.T, id string) time.Time {
	t.Helper()
	for seq := uint64(1); ; {
		p, ok, err := tb.b.Store.Oldest(ctxT(t), seq)
		if err != nil || !ok {
			t.Fatalf("the queue message of %s: found %v, %v", id, ok, err)
		}
		if p.JobID == id {
			return p.Enqueued
		}
		seq = p.Seq + 1
	}
}

// waitRunning waits until job id's record says it runs (loading or working).
func (tb *testBundle) waitRunning(t *testing.T, id string) {
	t.Helper()
	j, err := tb.watchUntil(id, 30*time.Second, func(j *broker.Job) bool {
		return j.State == broker.StateLoading || j.State == broker.StateWorking || j.State.Terminal()
	})
	if err != nil || j.State.Terminal() {
		t.Fatalf("job %s never ran: %+v, %v", id, j, err)
	}
}

// servedTags is the tags of the tagged jobs fake was called for, in order.
func servedTags(fake *ollamatest.Server) []string {
	var got []string
	for _, c := range fake.Calls() {
		if m := tagRE.FindSubmatch(c.Body); m != nil && string(m[1]) != "question" {
			got = append(got, string(m[1]))
		}
	}
	return got
}

// Two Macs on one NATS with one model. A job another Mac runs keeps its queue message
// at the head of its queue until it ends; it waits no more. It ran long enough to be
// older than MaxWait, and this Mac's pick took it for a job of its class waiting that
// long: the normal class looked starved, and a fresh normal job ran here before a
// fresh high one (the queue view, which reads such heads' records, put the high one
// first).
func TestAJobRunningOnAnotherMacDoesNotAgeItsClass(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	const maxWait = time.Minute
	macB, _, releaseB := tb.otherMac(t, "tiny-a")
	n0 := tb.tagged(t, "nzero", "tiny-a", broker.PriorityNormal)
	if err := macB.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	tb.waitRunning(t, n0.ID)
	n1 := tb.tagged(t, "none", "tiny-a", broker.PriorityNormal)
	hi := tb.tagged(t, "hi", "tiny-a", broker.PriorityHigh)
	// This Mac's first pick comes when n1 has waited exactly MaxWait (not late), n0,
	// running on the other Mac, longer.
	at := tb.enqueuedAt(t, n1.ID).Add(maxWait)
	var clock atomic.Pointer[time.Time]
	clock.Store(&at)
	tb.start(t, worker.WithServerClock(worker.Config{MaxWait: maxWait, IdlePoll: 20 * time.Millisecond, Elsewhere: offeredElsewhere}, func() time.Time { return *clock.Load() }))
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 2); err != nil {
		t.Fatal(err)
	}
	releaseB()
	for _, j := range []*broker.Job{n0, n1, hi} {
		tb.waitState(t, j.ID, broker.StateDone)
	}
	if got := servedTags(tb.fake); len(got) != 2 || got[0] != "hi" {
		t.Fatalf("this Mac served %v, want the high job first", got)
	}
}

// Two Macs on one NATS with the same models. This Mac drains the model it has loaded
// while the other Mac runs a job of another model that is older than MaxWait: that job
// waits no more, and the starvation bound is for jobs that wait. It swapped this Mac
// away from its drain to the other Mac's model, whose next job was fresh.
func TestAJobRunningOnAnotherMacDoesNotBreakTheDrain(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	const maxWait = time.Minute
	macB, _, releaseB := tb.otherMac(t, "tiny-a")
	n0 := tb.tagged(t, "nzero", "tiny-a", broker.PriorityNormal)
	if err := macB.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	tb.waitRunning(t, n0.ID)
	var clock atomic.Pointer[time.Time] // nil: the real clock
	releaseA := tb.fake.Hold("tiny-b")
	tb.start(t, worker.WithServerClock(worker.Config{MaxWait: maxWait, IdlePoll: 20 * time.Millisecond, Elsewhere: offeredElsewhere}, func() time.Time {
		if p := clock.Load(); p != nil {
			return *p
		}
		return time.Now()
	}))
	b0 := tb.tagged(t, "bzero", "tiny-b", broker.PriorityNormal)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-b", 1); err != nil {
		t.Fatal(err)
	}
	a1 := tb.tagged(t, "aone", "tiny-a", broker.PriorityNormal)
	b1 := tb.tagged(t, "bone", "tiny-b", broker.PriorityNormal)
	// The pick after b0 comes when a1 has waited exactly MaxWait (not late), n0, running
	// on the other Mac, longer.
	at := tb.enqueuedAt(t, a1.ID).Add(maxWait)
	clock.Store(&at)
	releaseA()
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	releaseB()
	for _, j := range []*broker.Job{n0, b0, a1, b1} {
		tb.waitState(t, j.ID, broker.StateDone)
	}
	if got := servedTags(tb.fake); len(got) != 3 || got[1] != "bone" {
		t.Fatalf("this Mac served %v, want its drain of tiny-b on before a swap", got)
	}
}

// Two Macs on one NATS, each with tiny-a, tiny-b and tiny-c. The other Mac drains
// tiny-b; this one ends its drain of tiny-a with a tiny-c job and a newer tiny-b job
// waiting. The tiny-b job the other Mac runs is older than the tiny-c one, and made
// tiny-b look the older model: this Mac swapped to tiny-b, which the other Mac already
// drains, and ran its newer job before the tiny-c one nobody runs.
func TestAJobRunningOnAnotherMacDoesNotDrawASwap(t *testing.T) {
	t.Parallel()
	three := ollamatest.WithModels(ollamatest.Model{Name: "tiny-a:latest"}, ollamatest.Model{Name: "tiny-b:latest"}, tinyC)
	tb := setupFake(t, []ollamatest.Option{three})
	macB, _, releaseB := tb.otherMac(t, "tiny-b")
	b0 := tb.tagged(t, "bzero", "tiny-b", broker.PriorityNormal)
	if err := macB.WaitStarted(waitCtx(t), "tiny-b", 1); err != nil {
		t.Fatal(err)
	}
	tb.waitRunning(t, b0.ID)
	releaseA := tb.fake.Hold("tiny-a")
	tb.start(t, worker.Config{IdlePoll: 20 * time.Millisecond, Elsewhere: offeredElsewhere})
	a0 := tb.tagged(t, "azero", "tiny-a", broker.PriorityNormal)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	c1 := tb.tagged(t, "cone", "tiny-c", broker.PriorityNormal)
	b1 := tb.tagged(t, "bone", "tiny-b", broker.PriorityNormal)
	releaseA()
	eventually(t, 30*time.Second, "this Mac ran three jobs", func() bool { return len(servedTags(tb.fake)) == 3 })
	releaseB()
	for _, j := range []*broker.Job{b0, a0, c1, b1} {
		tb.waitState(t, j.ID, broker.StateDone)
	}
	if got := servedTags(tb.fake); len(got) != 3 || got[1] != "cone" {
		t.Fatalf("this Mac served %v, want the tiny-c job right after its tiny-a one", got)
	}
}

// Two Macs on one NATS with the same two models, each draining its own. The
// consecutive cap is there so that another runner's jobs do not starve behind a drain;
// a runner another Mac drains does not starve. Each Mac swapped to the other's model
// at every cap, and back at the next: both Macs swapping every few jobs where neither
// needed to.
func TestTheCapDoesNotSwapToAModelAnotherMacDrains(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	macB, _, releaseB := tb.otherMac(t, "tiny-b")
	b0 := tb.tagged(t, "bzero", "tiny-b", broker.PriorityNormal)
	if err := macB.WaitStarted(waitCtx(t), "tiny-b", 1); err != nil {
		t.Fatal(err)
	}
	tb.waitRunning(t, b0.ID)
	releaseA := tb.fake.Hold("tiny-a")
	tb.start(t, worker.Config{IdlePoll: 20 * time.Millisecond, MaxConsecutive: 2, Elsewhere: offeredElsewhere})
	a0 := tb.tagged(t, "azero", "tiny-a", broker.PriorityNormal)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	jobs := []*broker.Job{b0, a0}
	for i := range 4 {
		jobs = append(jobs, tb.tagged(t, fmt.Sprintf("b%c", 'a'+i), "tiny-b", broker.PriorityNormal),
			tb.tagged(t, fmt.Sprintf("a%c", 'a'+i), "tiny-a", broker.PriorityNormal))
	}
	releaseA()
	eventually(t, 30*time.Second, "this Mac ran its tiny-a jobs", func() bool { return len(servedTags(tb.fake)) >= 5 })
	releaseB()
	for _, j := range jobs {
		tb.waitState(t, j.ID, broker.StateDone)
	}
	got := servedTags(tb.fake)
	for i, tag := range got[:5] {
		if tag[0] != 'a' {
			t.Fatalf("this Mac served %v: a tiny-b job at %d, before its own drain of tiny-a ended", got, i+1)
		}
	}
}

// A job whose record says it runs, but whose runner cannot be told gone (a record from
// before runners were named, or a runner whose presence has not lapsed yet), while its
// message is there to take: looking past it must not leave its queue out of the pick,
// on a shared NATS where another Mac has its model, or it would never run here.
func TestARunningRecordNoRunnerHoldsStillRunsOnASharedNATS(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	const maxWait = time.Minute
	j := tb.chat(t, "tiny-a", 1)
	if _, _, err := tb.b.Store.Modify(ctxT(t), j.ID, func(j *broker.Job) error {
		j.State, j.Attempt, j.QueueSeq = broker.StateWorking, 1, 0
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	at := tb.enqueuedAt(t, j.ID).Add(2 * maxWait) // its head is late too
	tb.start(t, worker.WithServerClock(worker.Config{MaxWait: maxWait, IdlePoll: 20 * time.Millisecond, Elsewhere: offeredElsewhere},
		func() time.Time { return at }))
	if got := tb.waitState(t, j.ID, broker.StateDone); got.Attempt != 2 {
		t.Fatalf("attempt %d, want 2", got.Attempt)
	}
}
