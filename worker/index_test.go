package worker

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// indexBundle is a real store with a queue index over it.
type indexBundle struct {
	t     *testing.T
	b     *brokertest.Bundle
	index *queueIndex
	ctx   context.Context
}

func newIndexBundle(t *testing.T) *indexBundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	b := brokertest.New(t)
	return &indexBundle{t: t, b: b, index: newQueueIndex(b.Store), ctx: ctx}
}

// submit queues a job of model and returns it with its queue key.
func (ib *indexBundle) submit(model string) (*broker.Job, string) {
	ib.t.Helper()
	body := []byte(fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}]}`, model))
	j, err := ib.b.Store.Submit(ib.ctx, &broker.Job{ID: broker.NewID(), Model: model, Kind: broker.KindChat}, body)
	if err != nil {
		ib.t.Fatal(err)
	}
	k, err := broker.KeyOf(j, body)
	if err != nil {
		ib.t.Fatal(err)
	}
	return j, k.String()
}

// look refreshes the index, checks its heads against a fresh index's (every queue
// counted, every head read) and tells whether it counted every queue.
func (ib *indexBundle) look() (counted bool) {
	ib.t.Helper()
	before := ib.index.counted
	got, err := ib.index.refresh(ib.ctx, time.Now())
	if err != nil {
		ib.t.Fatal(err)
	}
	fresh := newQueueIndex(ib.b.Store)
	want, err := fresh.refresh(ib.ctx, time.Now())
	if err != nil {
		ib.t.Fatal(err)
	}
	if g, w := byToken(got), byToken(want); !maps.Equal(g, w) {
		ib.t.Fatalf("heads\n got %v\nwant %v", g, w)
	}
	if !maps.Equal(ib.index.counts, fresh.counts) {
		ib.t.Fatalf("counts\n got %v\nwant %v", ib.index.counts, fresh.counts)
	}
	return ib.index.counted > before
}

func byToken(hs []head) map[string]uint64 {
	m := map[string]uint64{}
	for _, h := range hs {
		m[h.Token] = h.Seq
	}
	return m
}

// finish takes the next job of queue token and removes it as the worker does.
func (ib *indexBundle) finish(token string) {
	ib.t.Helper()
	d, err := ib.b.Store.NextWait(ib.ctx, token, 15*time.Second) // a no-wait fetch may miss a just-told job
	if err != nil || d == nil {
		ib.t.Fatalf("next %s: %v %v", token, d, err)
	}
	done := ib.index.removing(token, d.Seq)
	err = ib.b.Store.Finish(ib.ctx, d)
	done(err == nil)
	if err != nil {
		ib.t.Fatal(err)
	}
}

func TestIndexCountsQueuesOnlyWhenNeeded(t *testing.T) {
	t.Parallel()
	ib := newIndexBundle(t)
	_, a := ib.submit("ia")
	ib.submit("ia")
	ib.submit("ib")
	if !ib.look() {
		t.Fatal("the first look did not count every queue")
	}
	if ib.look() {
		t.Fatal("a look with nothing changed counted every queue")
	}
	ib.finish(a)
	if ib.look() {
		t.Fatal("a look after the worker's own confirmed removal counted every queue")
	}
	ib.finish(a) // the queue runs empty
	if ib.look() {
		t.Fatal("a look after the worker emptied a queue counted every queue")
	}
}

func TestIndexSeesCancelElsewhere(t *testing.T) {
	t.Parallel()
	ib := newIndexBundle(t)
	a1, _ := ib.submit("ia")
	ib.submit("ia")
	b1, _ := ib.submit("ib")
	ib.look()
	// A cancel deletes the queue head behind the worker's back: the next look must see it,
	// or queue ia would look older than it is.
	if _, err := ib.b.Store.Cancel(ib.ctx, a1.ID, "test"); err != nil {
		t.Fatal(err)
	}
	if !ib.look() {
		t.Fatal("a cancel elsewhere went unnoticed")
	}
	// The whole queue canceled: its head goes.
	if _, err := ib.b.Store.Cancel(ib.ctx, b1.ID, "test"); err != nil {
		t.Fatal(err)
	}
	if !ib.look() {
		t.Fatal("a cancel elsewhere went unnoticed")
	}
}

func TestIndexOwnRemovalDoesNotHideCancelElsewhere(t *testing.T) {
	t.Parallel()
	ib := newIndexBundle(t)
	_, a := ib.submit("ia")
	ib.submit("ia")
	b1, _ := ib.submit("ib")
	ib.submit("ib")
	ib.look()
	ib.finish(a)
	if _, err := ib.b.Store.Cancel(ib.ctx, b1.ID, "test"); err != nil {
		t.Fatal(err)
	}
	if !ib.look() {
		t.Fatal("a cancel elsewhere went unnoticed beside the worker's own removal")
	}
}

func TestIndexSeesJobsPublishedSinceTheLastLook(t *testing.T) {
	t.Parallel()
	ib := newIndexBundle(t)
	ib.submit("ia")
	ib.look()
	// A few: read one by one.
	ib.submit("ib")
	ib.submit("ia")
	ib.submit("ic")
	if ib.look() {
		t.Fatal("three new jobs made the look count every queue")
	}
	// Published and finished between two looks.
	_, d := ib.submit("id")
	ib.finish(d)
	ib.submit("id")
	ib.look()
	// Many: every queue counted.
	for i := range maxAppendScan + 1 {
		ib.submit(fmt.Sprintf("m%d", i))
	}
	if !ib.look() {
		t.Fatal("many new jobs did not make the look count every queue")
	}
}

func TestIndexRemovalUnderWayCountsEveryQueue(t *testing.T) {
	t.Parallel()
	ib := newIndexBundle(t)
	_, a := ib.submit("ia")
	ib.submit("ia")
	ib.look()
	d, err := ib.b.Store.Next(ib.ctx, a)
	if err != nil || d == nil {
		t.Fatalf("next: %v %v", d, err)
	}
	// The look cannot tell whether its state holds a removal under way.
	done := ib.index.removing(a, d.Seq)
	if !ib.look() {
		t.Fatal("a look during a removal trusted the stream state")
	}
	err = ib.b.Store.Finish(ib.ctx, d)
	done(err == nil)
	if err != nil {
		t.Fatal(err)
	}
	if !ib.look() {
		t.Fatal("the look after a removal that ended during the last one trusted its state")
	}
	if ib.look() {
		t.Fatal("a look with nothing changed counted every queue")
	}
}

func TestIndexUnconfirmedRemovalCountsEveryQueue(t *testing.T) {
	t.Parallel()
	ib := newIndexBundle(t)
	_, a := ib.submit("ia")
	ib.submit("ia")
	ib.look()
	d, err := ib.b.Store.Next(ib.ctx, a)
	if err != nil || d == nil {
		t.Fatalf("next: %v %v", d, err)
	}
	// A term the server does not confirm: once it lands the sum breaks.
	if err := ib.b.Store.Discard(d, "test"); err != nil {
		t.Fatal(err)
	}
	ib.index.touch(a)
	waitQueueLen(t, ib, 1)
	if !ib.look() {
		t.Fatal("an unconfirmed removal went unnoticed")
	}
}

func waitQueueLen(t *testing.T, ib *indexBundle, want uint64) {
	t.Helper()
	for {
		n, err := ib.b.Store.QueueLen(ib.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n == want {
			return
		}
		select {
		case <-ib.ctx.Done():
			t.Fatalf("queue holds %d, want %d", n, want)
		case <-time.After(time.Millisecond):
		}
	}
}

// A job that ends through another process (its state event, jobEnded) marks its queue
// while its message heads it; its message leaves after the event (a cancel writes the
// record first, a run's end is stored before its ack), so a look in between reads the
// same head, and the queue is marked again for the next look: with a job queued on the
// same queue meanwhile the count is as it was, and the ended job's stamp would stand for
// the new job's until the full refresh.
func TestIndexReadsAgainAHeadWhoseJobEndedBeforeItsMessageLeft(t *testing.T) {
	t.Parallel()
	ib := newIndexBundle(t)
	a1, a := ib.submit("ia")
	ib.look()
	ib.index.jobEnded(a1.ID)
	ib.look() // reads the head again: a1's message is still there
	seq := ib.index.heads[a].Seq
	if ib.index.heads[a].JobID != a1.ID {
		t.Fatalf("head of %s is %+v, want %s", a, ib.index.heads[a], a1.ID)
	}
	// Its removal through another process (no OnQueueRemoved here), and a new job.
	if err := ib.b.Store.DeleteQueued(ib.ctx, seq); err != nil {
		t.Fatal(err)
	}
	ib.submit("ia")
	ib.look()
}

// More ended jobs between two looks than the index keeps make the next look read every
// head.
func TestIndexTooManyEndedJobsReadEveryHead(t *testing.T) {
	t.Parallel()
	ib := newIndexBundle(t)
	a1, a := ib.submit("ia")
	ib.look()
	ib.look()
	if err := ib.b.Store.DeleteQueued(ib.ctx, ib.index.heads[a].Seq); err != nil {
		t.Fatal(err)
	}
	ib.submit("ia")
	ib.index.jobEnded(a1.ID)
	for i := range maxEnded {
		ib.index.jobEnded(fmt.Sprint("other", i))
	}
	ib.look()
}

// TestIndexDeletionsBetweenLooksAreBounded: the queue messages this process deletes
// between two looks (a purge of a program's thousands of waiting jobs, an idle worker's
// long wait) were each kept until the next look; past maxEnded the index keeps none and
// that look re-reads every head, which still finds the queue's new head.
func TestIndexDeletionsBetweenLooksAreBounded(t *testing.T) {
	t.Parallel()
	ib := newIndexBundle(t)
	_, a := ib.submit("ia")
	ib.look()
	head := ib.index.heads[a].Seq
	if err := ib.b.Store.DeleteQueued(ib.ctx, head); err != nil {
		t.Fatal(err)
	}
	newer, _ := ib.submit("ia")
	ib.index.removed(head)
	for i := range 4 * maxEnded {
		ib.index.removed(uint64(1_000_000 + i))
	}
	ib.index.mu.Lock()
	kept := len(ib.index.deleted)
	ib.index.mu.Unlock()
	if kept > maxEnded {
		t.Fatalf("%d deletions kept between two looks, want at most %d", kept, maxEnded)
	}
	ib.look()
	if got := ib.index.heads[a].JobID; got != newer.ID {
		t.Fatalf("head after the look: %s, want the new job %s", got, newer.ID)
	}
}
