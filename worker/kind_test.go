package worker_test

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// handedBack is what a foreman logs when it gives a job of a kind it does not know back
// to the queue.
const handedBack = "job of a kind this foreman does not know handed back for a newer foreman"

// queueUnknownKind stores a job of a kind no foreman of this build knows, record and queue
// message, as a newer foreman's Submit would.
func (tb *testBundle) queueUnknownKind(t *testing.T, kind broker.Kind) *broker.Job {
	t.Helper()
	if slices.Contains(broker.Kinds, kind) {
		t.Fatalf("kind %q is known", kind)
	}
	j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: kind}
	body := chatBody("tiny-a", 1)
	tb.b.CreateRecord(t, j)
	tb.b.PublishBare(t, j, body)
	return j
}

// On a shared NATS a job whose kind this foreman does not know is not removed: it goes
// back to the queue for a foreman that knows it, delivery after delivery, and only at
// JetStream's last delivery ends failed, with an error that says why (ADR-0061). Before,
// its message was removed and its record stayed queued until the job TTL.
func TestUnknownKindIsHandedBackUntilTheLastDelivery(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	j := tb.queueUnknownKind(t, "summarize")
	logs := &warnings{}
	tb.start(t, worker.Config{Logger: slog.New(logs)})

	got := tb.waitState(t, j.ID, broker.StateFailed)
	maxDeliver := tb.b.Store.Config().MaxDeliver()
	for _, want := range []string{`job kind "summarize" is unknown to this foreman`, "older than the one that queued the job",
		fmt.Sprintf("in %d deliveries", maxDeliver)} {
		if !strings.Contains(got.Error, want) {
			t.Errorf("error %q, want it to say %q", got.Error, want)
		}
	}
	if n := logs.count(handedBack); n != maxDeliver-1 {
		t.Errorf("handed back %d times, want %d (every delivery but the last): %s", n, maxDeliver-1, strings.Join(logs.msgs, "; "))
	}
	if n := logs.count("unusable queue message removed"); n != 0 {
		t.Errorf("%d removals logged, want none", n)
	}
	if got.Attempt != 0 {
		t.Errorf("attempt %d, want 0: the job never ran", got.Attempt)
	}
	tb.waitQueueEmpty(t)
	if calls := inferenceCalls(tb.fake); len(calls) != 0 {
		t.Errorf("target called for %v", calls)
	}
}

// On a store of its own no other foreman can take a job of a kind this one does not know
// (it came from a newer foreman this one replaced): it ends failed at once.
func TestUnknownKindOnAnExclusiveStoreFailsAtOnce(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.Exclusive = true }))
	j := tb.queueUnknownKind(t, "summarize")
	logs := &warnings{}
	tb.start(t, worker.Config{Logger: slog.New(logs)})

	got := tb.waitState(t, j.ID, broker.StateFailed)
	for _, want := range []string{`job kind "summarize" is unknown to this foreman`, "downgrade"} {
		if !strings.Contains(got.Error, want) {
			t.Errorf("error %q, want it to say %q", got.Error, want)
		}
	}
	if n := logs.count(handedBack); n != 0 {
		t.Errorf("handed back %d times, want 0", n)
	}
	tb.waitQueueEmpty(t)
}

// Two foremen on one NATS, the older from before the embeddings kind: the older one meets
// the job first and leaves it in the queue, and the newer one runs it.
func TestJobOfAKindAnOlderForemanDoesNotKnowRunsOnANewerOne(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	ctx := ctxT(t)
	var oldKinds []broker.Kind
	for _, k := range broker.Kinds {
		if k != broker.KindEmbeddings && k != broker.KindOpenAIEmbeddings {
			oldKinds = append(oldKinds, k)
		}
	}
	older, err := broker.Open(ctx, broker.Config{Conn: tb.b.Conn, Kinds: oldKinds})
	if err != nil {
		t.Fatal(err)
	}
	if older.Knows(broker.KindEmbeddings) || !tb.b.Store.Knows(broker.KindEmbeddings) {
		t.Fatal("only the newer store should know the embeddings kind")
	}
	logs := &warnings{}
	// The hand-back delay outlasts the older loop's short rechecks; it looks again only
	// when a job is published (IdlePoll an hour), so the newer one's polls find the job.
	tb.startOn(t, older, worker.Config{Logger: slog.New(logs), RetryDelay: 300 * time.Millisecond, IdlePoll: time.Hour})
	j := tb.submit(t, "tiny-embed", broker.KindEmbeddings, `{"model":"tiny-embed","prompt":"hello"}`)
	const removed = "unusable queue message removed"
	eventually(t, 30*time.Second, "the older foreman meets the job", func() bool {
		return logs.count(handedBack)+logs.count(removed) > 0
	})
	if n := logs.count(removed); n != 0 {
		t.Fatalf("the older foreman removed the job's message: %s", strings.Join(logs.msgs, "; "))
	}
	if rec, _, err := tb.b.Store.Get(ctx, j.ID); err != nil || rec.State != broker.StateQueued {
		t.Fatalf("after the hand-back: %+v, %v; want it queued", rec, err)
	}
	if n, err := tb.b.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Fatalf("queue holds %d messages (%v), want the job's 1", n, err)
	}

	tb.start(t, worker.Config{IdlePoll: 10 * time.Millisecond})
	tb.waitState(t, j.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
	var embeddings int
	for _, c := range tb.fake.Calls() {
		if c.Path == "/api/embeddings" {
			embeddings++
		}
	}
	if embeddings != 1 {
		t.Errorf("%d calls of /api/embeddings, want 1: %+v", embeddings, tb.fake.Calls())
	}
}

// A job of a kind this foreman does not know whose queue message may reach the job TTL
// before it comes back ends failed at once: put back, it would be queued anew
// (Requeue) from a delivery whose stored body was never read, emptying a large body,
// and its delivery count would start again.
func TestUnknownKindNearTheJobTTLFails(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.JobTTL = 8 * time.Second }))
	j := tb.queueUnknownKind(t, "summarize")
	// With a hand-back of 3 s, a message 3 s old may be gone (past 8 s, less a quarter)
	// before it is delivered again.
	token, _ := broker.ModelToken("tiny-a")
	oldest, ok, err := tb.b.Store.OldestOf(ctxT(t), token)
	if err != nil || !ok {
		t.Fatalf("the job's message: %v %v", ok, err)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for tb.b.Store.ServerNow().Sub(oldest.Enqueued) < 3200*time.Millisecond {
		<-tick.C
	}
	logs := &warnings{}
	tb.start(t, worker.Config{Logger: slog.New(logs), RetryDelay: 3 * time.Second})
	got := tb.waitState(t, j.ID, broker.StateFailed)
	if !strings.Contains(got.Error, `job kind "summarize" is unknown to this foreman`) || !strings.Contains(got.Error, "before the job TTL") {
		t.Fatalf("error %q, want the unknown kind, ended before the job TTL", got.Error)
	}
	if n := logs.count(handedBack); n != 0 {
		t.Errorf("handed back %d times, want none", n)
	}
}
