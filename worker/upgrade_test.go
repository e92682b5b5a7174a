package worker_test

import (
	"encoding/base32"
	"log/slog"
	"strings"
	"testing"

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
