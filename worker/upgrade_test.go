package worker_test

import (
	"encoding/base32"
	"log/slog"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// earlierToken is the model token a foreman from before f24b732 made of a normalized
// name: lower-case base32 of it, whatever this build's normal form of it is.
func earlierToken(normalized string) string {
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString([]byte(normalized)))
}

// A foreman from before f24b732 normalized "library/tiny-a" to "library/tiny-a:latest",
// where this one makes it "tiny-a:latest": a job it queued for that name waits on a
// subject this build would not make. Upgraded in place, the worker took the subject for
// one of no model and removed its messages ("queue messages of no model removed"): the
// job's record stayed queued with nothing behind it, no answer and no webhook until the
// job TTL dropped it. It runs (ADR-0099).
func TestAJobQueuedUnderAnEarlierModelTokenRuns(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	j := &broker.Job{ID: broker.NewID(), Model: "library/tiny-a", Kind: broker.KindChat}
	body := chatBody("library/tiny-a", 1)
	tb.b.CreateRecord(t, j)
	msg := brokertest.QueueMsg(t, j, body)
	msg.Subject = broker.QueueSubject(earlierToken("library/tiny-a:latest"))
	if now, _ := broker.ModelToken(j.Model); broker.QueueSubject(now) == msg.Subject {
		t.Fatalf("the earlier token is this build's too: %s", msg.Subject)
	}
	tb.b.PublishQueueMsg(t, msg)
	logs := &warnings{}
	tb.start(t, worker.Config{Logger: slog.New(logs)})

	tb.waitState(t, j.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
	if calls := inferenceCalls(tb.fake); len(calls) != 1 {
		t.Errorf("inference calls %v, want the job's one", calls)
	}
	if len(logs.msgs) != 0 {
		t.Errorf("warnings: %s", strings.Join(logs.msgs, "; "))
	}
}

// queueUnderLaterKey stores a job as a later foreman would under a queue key this build
// cannot read (a class it does not know), record and queue message.
func (tb *testBundle) queueUnderLaterKey(t *testing.T) *broker.Job {
	t.Helper()
	j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	tb.b.CreateRecord(t, j)
	msg := brokertest.QueueMsg(t, j, chatBody("tiny-a", 1))
	tok, err := broker.ModelToken(j.Model)
	if err != nil {
		t.Fatal(err)
	}
	msg.Subject = broker.QueueSubject(tok + ".d.urgent._")
	if !broker.LaterQueueKey(tok+".d.urgent._") || broker.TokenValid(tok+".d.urgent._") {
		t.Fatalf("%s is no later foreman's key to this build", msg.Subject)
	}
	tb.b.PublishQueueMsg(t, msg)
	return j
}

const leftForLater = "jobs queued by a later foreman under a queue key this foreman cannot read left for a foreman that reads it"

// On a shared NATS a job a later foreman queued under a queue key this one cannot read
// (a new class here) stays in the queue for a foreman that reads it. The pick took the
// subject for one of no model and purged it: the job's record stayed queued with nothing
// behind it until the job TTL, no answer, no webhook (ADR-0099).
func TestALaterForemansQueueKeyIsLeftForIt(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	ctx := ctxT(t)
	later := tb.queueUnderLaterKey(t)
	logs := &warnings{}
	tb.start(t, worker.Config{Logger: slog.New(logs)})
	// A job of this build queued behind it runs: the worker looked past the later one.
	job := tb.chat(t, "tiny-a", 2)
	tb.waitState(t, job.ID, broker.StateDone)
	eventually(t, 30*time.Second, "only the later foreman's job queued", func() bool {
		n, err := tb.b.Store.QueueLen(ctx)
		return err == nil && n == 1
	})

	if rec, _, err := tb.b.Store.Get(ctx, later.ID); err != nil || rec.State != broker.StateQueued {
		t.Fatalf("the later foreman's job: %+v, %v; want it queued", rec, err)
	}
	if n := logs.count("queue messages of no model removed"); n != 0 {
		t.Fatalf("the later foreman's queue was purged: %s", strings.Join(logs.msgs, "; "))
	}
	// Looked at once: its head has not changed since.
	if n := logs.count(leftForLater); n != 1 {
		t.Errorf("%d looks logged, want 1: %s", n, strings.Join(logs.msgs, "; "))
	}
	if calls := inferenceCalls(tb.fake); len(calls) != 1 {
		t.Errorf("inference calls %v, want this build's job's one", calls)
	}
}

// On a store of its own no foreman but this one exists: a job queued under a queue key
// it cannot read came from a later foreman it replaced (a downgrade), and ends failed at
// once, saying so, its message removed.
func TestALaterForemansQueueKeyOnAnExclusiveStoreFailsAtOnce(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.Exclusive = true }))
	later := tb.queueUnderLaterKey(t)
	logs := &warnings{}
	tb.start(t, worker.Config{Logger: slog.New(logs)})

	got := tb.waitState(t, later.ID, broker.StateFailed)
	for _, want := range []string{"a queue key this foreman cannot read", "downgrade"} {
		if !strings.Contains(got.Error, want) {
			t.Errorf("error %q, want it to say %q", got.Error, want)
		}
	}
	tb.waitQueueEmpty(t)
	if calls := inferenceCalls(tb.fake); len(calls) != 0 {
		t.Errorf("target called for %v", calls)
	}
}

// A later foreman's job whose record this build cannot read (it does not decode) cannot
// be settled, and its queue key's look stays unfinished: it is looked at again once per
// laterRelook, not at every pick. Before, every pick read the subject again and warned
// again, a warning a job run (and one a second while idle).
func TestALaterForemansUnreadableJobIsNotReadAtEveryPick(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	ctx := ctxT(t)
	later := tb.queueUnderLaterKey(t)
	if _, err := tb.b.JobRecords(t).Put(ctx, "job."+later.ID, []byte(`{"id":`)); err != nil {
		t.Fatal(err)
	}
	logs := &warnings{}
	tb.start(t, worker.Config{Logger: slog.New(logs)})
	const jobs = 5 // each ends in a pick
	for i := range jobs {
		j := tb.chat(t, "tiny-a", i+1)
		tb.waitState(t, j.ID, broker.StateDone)
	}
	const unread = "read the record of a job of a later foreman's queue key"
	if n := logs.count(unread); n != 1 {
		t.Errorf("%d warnings %q over %d picks, want 1", n, unread, jobs)
	}
}
