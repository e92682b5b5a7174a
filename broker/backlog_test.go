package broker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// The backlog follows the queue: new jobs appear with their headers, a canceled one
// leaves, oldest first throughout.
func TestBacklogFollowsQueue(t *testing.T) {
	t.Parallel()
	bb := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	submit := func(model, program string, class broker.Priority) string {
		j, err := bb.Store.Submit(ctx, &broker.Job{Model: model, Kind: broker.KindChat, Program: program, Priority: class},
			[]byte(`{"model":"`+model+`","messages":[]}`))
		if err != nil {
			t.Fatal(err)
		}
		return j.ID
	}
	ids := func(msgs []broker.QueuedMessage) string {
		var out []string
		for _, m := range msgs {
			out = append(out, m.JobID)
		}
		return fmt.Sprint(out)
	}
	back := bb.Store.Backlog()
	a := submit("tiny-a", "", "")
	b := submit("tiny-b", "etl", broker.PriorityLow)
	c := submit("tiny-a", "", broker.PriorityHigh)
	msgs, err := back.Refresh(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(msgs), fmt.Sprint([]string{a, b, c}); got != want {
		t.Fatalf("backlog %s, want %s", got, want)
	}
	m := msgs[1]
	if m.Model != "tiny-b" || m.Program != "etl" || m.Priority != broker.PriorityLow || m.Kind != broker.KindChat || m.Enqueued.IsZero() {
		t.Fatalf("message %+v", m)
	}
	if k, err := broker.ParseQueueKey(m.Token); err != nil || k.Class != broker.PriorityLow {
		t.Fatalf("token %q: %v", m.Token, err)
	}
	if _, err := bb.Store.Cancel(ctx, b, "test"); err != nil {
		t.Fatal(err)
	}
	d := submit("tiny-b", "", "")
	// A copy younger than maxAge is served as it is.
	if msgs, _ := back.Refresh(ctx, time.Hour); ids(msgs) != fmt.Sprint([]string{a, b, c}) {
		t.Fatalf("cached backlog %s", ids(msgs))
	}
	msgs, err = back.Refresh(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(msgs), fmt.Sprint([]string{a, c, d}); got != want {
		t.Fatalf("after a cancel and a submit: %s, want %s", got, want)
	}
}

// fillQueue publishes n queue messages spread over models, classes and programs.
func fillQueue(b *testing.B, bb *brokertest.Bundle, n int) {
	js := bb.JetStream(b)
	var acks []jetstream.PubAckFuture
	for i := range n {
		model := fmt.Sprintf("m%d", i%4)
		class := []broker.Priority{broker.PriorityHigh, broker.PriorityNormal, broker.PriorityLow}[i%3]
		j := &broker.Job{ID: broker.NewID(), Model: model, Kind: broker.KindChat, Priority: class, Program: fmt.Sprintf("p%d", i%5)}
		k, err := broker.KeyOf(j, nil)
		if err != nil {
			b.Fatal(err)
		}
		msg := nats.NewMsg(broker.QueueSubject(k.String()))
		msg.Header.Set(broker.HeaderJobID, j.ID)
		msg.Header.Set(broker.HeaderModel, model)
		msg.Header.Set(broker.HeaderKind, string(j.Kind))
		msg.Header.Set(broker.HeaderPriority, string(class))
		msg.Header.Set(broker.HeaderProgram, j.Program)
		msg.Data = []byte(`{"model":"` + model + `","messages":[{"role":"user","content":"hello world"}]}`)
		f, err := js.PublishMsgAsync(msg)
		if err != nil {
			b.Fatal(err)
		}
		acks = append(acks, f)
		if i%1000 == 999 {
			waitAcks(b, js)
		}
	}
	waitAcks(b, js)
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			b.Fatal(err)
		}
	}
}

func waitAcks(b *testing.B, js jetstream.JetStream) {
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publishes not acknowledged")
	}
}

// BenchmarkBacklogFirstRead measures reading a 10k-job queue's headers into a new
// backlog (once per process; later refreshes read only what is new).
func BenchmarkBacklogFirstRead(b *testing.B) {
	bb := brokertest.New(b, brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 1_000_000 }))
	fillQueue(b, bb, 10_000)
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		msgs, err := bb.Store.Backlog().Refresh(ctx, 0)
		if err != nil || len(msgs) != 10_000 {
			b.Fatalf("%d messages, %v", len(msgs), err)
		}
	}
}

// BenchmarkBacklogRefresh measures bringing a 10k-job backlog up to date when nothing
// changed: the cost of each view that is not served from the cache.
func BenchmarkBacklogRefresh(b *testing.B) {
	bb := brokertest.New(b, brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 1_000_000 }))
	fillQueue(b, bb, 10_000)
	ctx := context.Background()
	back := bb.Store.Backlog()
	if _, err := back.Refresh(ctx, 0); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if msgs, err := back.Refresh(ctx, 0); err != nil || len(msgs) != 10_000 {
			b.Fatalf("%d messages, %v", len(msgs), err)
		}
	}
}

// A refresh cut by the caller's deadline keeps what it read: the next one reads only the
// rest, so a large queue's first read finishes over several refreshes.
func TestBacklogRefreshResumesAfterCut(t *testing.T) {
	t.Parallel()
	bb := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 6
	for range n {
		if _, err := bb.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a","messages":[]}`)); err != nil {
			t.Fatal(err)
		}
	}
	back := bb.Store.Backlog()
	cut, stop := context.WithCancel(ctx)
	reads := 0
	back.OnRead(func(uint64) {
		if reads++; reads == 3 {
			stop() // the caller's deadline passes after 3 reads
		}
	})
	if _, err := back.Refresh(cut, 0); err == nil {
		t.Fatal("a refresh whose context ended mid-read succeeded")
	}
	reads = 0
	msgs, err := back.Refresh(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != n || reads != n-3 {
		t.Fatalf("after the cut: %d messages with %d reads, want %d with %d", len(msgs), reads, n, n-3)
	}
}

// What left the queue does not cost a refresh: a job waiting for hours (its model only on
// a target that is away) keeps every later job's removal inside the stream's range, and a
// loop of submits and cancels makes those millions. A refresh after a thousand of them
// receives from NATS what one after ten does.
//
// Each call has its own ctxT: the thousand submits and cancels together take longer than
// one ctxT allows on a loaded machine under -race.
func TestBacklogRefreshCostsNothingForWhatLeft(t *testing.T) {
	t.Parallel()
	bb := brokertest.New(t)
	pinned := submit(t, bb.Store, "away", `{"model":"away","messages":[]}`)
	churn := func(n int) {
		for range n {
			j := submit(t, bb.Store, "tiny-a", `{"model":"tiny-a","messages":[]}`)
			if _, err := bb.Store.Cancel(ctxT(t), j.ID, "test"); err != nil {
				t.Fatal(err)
			}
		}
	}
	back := bb.Store.Backlog()
	// received is the bytes NATS sent the store's connection for one refresh; nothing
	// else runs on it meanwhile (every submit and cancel above was answered).
	received := func() uint64 {
		t.Helper()
		before := bb.Conn.Stats().InBytes
		msgs, err := back.Refresh(ctxT(t), 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != 1 || msgs[0].JobID != pinned.ID {
			t.Fatalf("backlog %+v, want only the pinned job", msgs)
		}
		return bb.Conn.Stats().InBytes - before
	}
	churn(10)
	few := received()
	churn(1000)
	many := received()
	// The stream's list of a thousand deleted sequences alone is over 4 KB; what may
	// differ is the digits of the counts and times in the stream info.
	if many > few+256 {
		t.Fatalf("a refresh received %d bytes after 1000 submits and cancels, %d after 10", many, few)
	}
}

// The backlog drops what left the queue wherever it was in its subject: the oldest (the
// worker takes it), the newest and some in the middle (canceled), a whole subject
// (purged), and keeps the rest, as a backlog read afresh has them; told by the stream's
// list of deleted sequences (short here) or, when the list is long, by reads.
func TestBacklogDropsWhatLeft(t *testing.T) {
	t.Parallel()
	for name, maxDeleted := range map[string]int{"by the deleted list": -1, "by reads": 0} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testBacklogDropsWhatLeft(t, maxDeleted)
		})
	}
}

func testBacklogDropsWhatLeft(t *testing.T, maxDeleted int) {
	bb := brokertest.New(t)
	ctx := ctxT(t)
	models := []string{"tiny-a", "tiny-b", "tiny-c"}
	for range 6 {
		for _, m := range models {
			submit(t, bb.Store, m, `{"model":"`+m+`","messages":[]}`)
		}
	}
	back := bb.Store.Backlog()
	if maxDeleted >= 0 {
		back.SetMaxDeleted(maxDeleted)
	}
	msgs, err := back.Refresh(ctx, 0)
	if err != nil || len(msgs) != 18 {
		t.Fatalf("backlog of %d, %v", len(msgs), err)
	}
	// msgs[3i] are tiny-a's, msgs[3i+1] tiny-b's, msgs[3i+2] tiny-c's.
	if err := bb.Store.DeleteQueued(ctx, msgs[0].Seq); err != nil { // tiny-a's oldest
		t.Fatal(err)
	}
	for _, i := range []int{6, 9, 16} { // tiny-a's 3rd and 4th, tiny-b's newest
		if _, err := bb.Store.Cancel(ctx, msgs[i].JobID, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if err := bb.Store.PurgeQueued(ctx, msgs[2].Token); err != nil { // tiny-c
		t.Fatal(err)
	}
	want := []string{}
	for i, m := range msgs {
		if i != 0 && i != 6 && i != 9 && i != 16 && i%3 != 2 {
			want = append(want, m.JobID)
		}
	}
	ids := func(msgs []broker.QueuedMessage) []string {
		out := []string{}
		for _, m := range msgs {
			out = append(out, m.JobID)
		}
		return out
	}
	got, err := back.Refresh(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := bb.Store.Backlog().Refresh(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ids(got)) != fmt.Sprint(want) || fmt.Sprint(ids(fresh)) != fmt.Sprint(want) {
		t.Fatalf("backlog %v, read afresh %v, want %v", ids(got), ids(fresh), want)
	}
}

// A cancel in the middle of a deep subject costs a refresh a bounded number of requests:
// one more info request when the stream's list of deleted sequences is short, else at
// most BacklogReadsPerRefresh reads, the search going on over the next refreshes (which
// show the canceled job meanwhile) until the backlog is what a read afresh has, also when
// a message the search had passed leaves meanwhile.
func TestBacklogFindsACancelInADeepSubjectInBoundedRequests(t *testing.T) {
	t.Parallel()
	bb := brokertest.New(t)
	ctx := ctxT(t)
	const n = 200
	for range n {
		submit(t, bb.Store, "tiny-a", `{"model":"tiny-a","messages":[]}`)
	}
	back := bb.Store.Backlog()
	msgs, err := back.Refresh(ctx, 0)
	if err != nil || len(msgs) != n {
		t.Fatalf("backlog of %d, %v", len(msgs), err)
	}
	ids := func(msgs []broker.QueuedMessage) string {
		var out []string
		for _, m := range msgs {
			out = append(out, m.JobID)
		}
		return fmt.Sprint(out)
	}
	// refresh returns the backlog and the requests one refresh sent NATS; nothing else
	// runs on the store's connection meanwhile.
	refresh := func() ([]broker.QueuedMessage, uint64) {
		t.Helper()
		before := bb.Conn.Stats().OutMsgs
		msgs, err := back.Refresh(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		return msgs, bb.Conn.Stats().OutMsgs - before
	}
	fresh := func() string {
		t.Helper()
		msgs, err := bb.Store.Backlog().Refresh(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		return ids(msgs)
	}

	// The list of deleted sequences is short: one info request more.
	if _, err := bb.Store.Cancel(ctx, msgs[n/2].JobID, "test"); err != nil {
		t.Fatal(err)
	}
	got, reqs := refresh()
	if want := fresh(); ids(got) != want || reqs > 2 {
		t.Fatalf("with the deleted list: %d requests, backlog right %v; want at most 2", reqs, ids(got) == want)
	}

	// The list is too long to ask for: reads, at most BacklogReadsPerRefresh a refresh.
	back.SetMaxDeleted(0)
	if _, err := bb.Store.Cancel(ctx, msgs[3*n/4].JobID, "test"); err != nil {
		t.Fatal(err)
	}
	limit := uint64(1 + broker.BacklogReadsPerRefresh) // the info and the reads
	got, reqs = refresh()
	if reqs > limit {
		t.Fatalf("a refresh after a cancel in the middle of %d sent %d requests, want at most %d", n, reqs, limit)
	}
	// One the search had passed leaves: the search starts again once it met in the middle.
	if _, err := bb.Store.Cancel(ctx, msgs[1].JobID, "test"); err != nil {
		t.Fatal(err)
	}
	want := fresh()
	for i := 0; ids(got) != want; i++ {
		if i > 2*n/broker.BacklogReadsPerRefresh+4 {
			t.Fatalf("after %d refreshes the backlog holds %d, a read afresh %d", i, len(got), n-3)
		}
		if got, reqs = refresh(); reqs > limit {
			t.Fatalf("refresh %d sent %d requests, want at most %d", i+2, reqs, limit)
		}
	}
	if got, reqs = refresh(); ids(got) != want || reqs != 1 {
		t.Fatalf("once found, a refresh sent %d requests (want 1), backlog right %v", reqs, ids(got) == want)
	}
}

// A search carried over refreshes notices what leaves at either end meanwhile: the
// subject's oldest job taken by the worker (another subject's older job keeping the
// stream's first sequence where it was) and a job submitted after the search started
// then canceled are each dropped within a refresh or two, not once the search swept the
// rest of the middle; the search still ends with the backlog a read afresh has.
func TestBacklogSearchNoticesWhatLeavesAtEitherEnd(t *testing.T) {
	t.Parallel()
	bb := brokertest.New(t)
	ctx := ctxT(t)
	submit(t, bb.Store, "tiny-b", `{"model":"tiny-b","messages":[]}`) // keeps FirstSeq
	const n = 300
	for range n {
		submit(t, bb.Store, "tiny-a", `{"model":"tiny-a","messages":[]}`)
	}
	back := bb.Store.Backlog()
	back.SetMaxDeleted(0) // the list is too long to ask for: reads
	msgs, err := back.Refresh(ctx, 0)
	if err != nil || len(msgs) != n+1 {
		t.Fatalf("backlog of %d, %v", len(msgs), err)
	}
	refresh := func() []broker.QueuedMessage {
		t.Helper()
		msgs, err := back.Refresh(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		return msgs
	}
	holds := func(msgs []broker.QueuedMessage, seq uint64) bool {
		for _, m := range msgs {
			if m.Seq == seq {
				return true
			}
		}
		return false
	}
	// gone refreshes until seq is dropped, at most limit times, and says how many it took.
	gone := func(what string, seq uint64, limit int) {
		t.Helper()
		for i := 1; ; i++ {
			if !holds(refresh(), seq) {
				return
			}
			if i >= limit {
				t.Fatalf("%s: still held after %d refreshes", what, i)
			}
		}
	}
	// A cancel in the middle starts a search of several refreshes.
	mid := msgs[1+n/2]
	if _, err := bb.Store.Cancel(ctx, mid.JobID, "test"); err != nil {
		t.Fatal(err)
	}
	if !holds(refresh(), mid.Seq) {
		t.Fatal("the middle of a deep subject found in one refresh; the test needs a longer search")
	}
	// The subject's oldest is taken.
	oldest := msgs[1]
	if err := bb.Store.DeleteQueued(ctx, oldest.Seq); err != nil {
		t.Fatal(err)
	}
	gone("the subject's oldest taken", oldest.Seq, 2)
	// A job submitted after the search started is canceled.
	late := submit(t, bb.Store, "tiny-a", `{"model":"tiny-a","messages":[]}`)
	var lateSeq uint64
	for _, m := range refresh() {
		if m.JobID == late.ID {
			lateSeq = m.Seq
		}
	}
	if lateSeq == 0 || !holds(refresh(), mid.Seq) {
		t.Fatalf("late job read %v; the search still on %v", lateSeq != 0, holds(refresh(), mid.Seq))
	}
	if _, err := bb.Store.Cancel(ctx, late.ID, "test"); err != nil {
		t.Fatal(err)
	}
	gone("a job submitted after the search started, canceled", lateSeq, 2)
	// The search goes on to find the middle one.
	gone("the middle one", mid.Seq, n/broker.BacklogReadsPerRefresh+4)
	fresh, err := bb.Store.Backlog().Refresh(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := refresh(); fmt.Sprint(got) != fmt.Sprint(fresh) {
		t.Fatalf("backlog of %d, a read afresh %d", len(got), len(fresh))
	}
}
