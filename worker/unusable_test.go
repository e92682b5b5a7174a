package worker_test

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// warnings keeps the messages logged at Warn and above.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	w.msgs = append(w.msgs, r.Message)
	w.mu.Unlock()
	return nil
}
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnings) WithGroup(string) slog.Handler      { return w }

func (w *warnings) count(msg string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, m := range w.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

// A queue message foreman did not enqueue for a job (no valid id, another model's subject,
// a job that belongs elsewhere) is removed at once with a warning, not NAKed until
// JetStream gives up and then left in the queue; the jobs behind it run. (An unknown kind
// is a newer foreman's job, left to it: kind_test.go.)
func TestUnusableQueueMessagesAreRemoved(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	ctx := ctxT(t)
	tokenA, _ := broker.ModelToken("tiny-a")
	otherID := broker.NewID() // a real job of tiny-b, submitted after the junk

	junk := func(subject, body string, hdr ...string) {
		t.Helper()
		m := nats.NewMsg(subject)
		m.Data = []byte(body)
		for i := 0; i+1 < len(hdr); i += 2 {
			m.Header.Set(hdr[i], hdr[i+1])
		}
		if _, err := tb.b.JetStream(t).PublishMsg(ctx, m); err != nil {
			t.Fatalf("publish junk: %v", err)
		}
	}
	queueA := broker.QueueSubject(tokenA)
	body := chatBody("tiny-a", 99)
	// What a forged reply subject on a submit used to leave: a reply, no headers.
	junk(queueA, `{"job_id":"01KXXXXXXXXXXXXXXXXXXXXXXX"}`)
	junk(queueA, body, broker.HeaderJobID, "not-a-ulid", broker.HeaderModel, "tiny-a", broker.HeaderKind, "chat")
	junk(queueA, body, broker.HeaderJobID, broker.NewID(), broker.HeaderModel, "tiny-b", broker.HeaderKind, "chat")
	junk(queueA, body, broker.HeaderJobID, broker.NewID(), broker.HeaderModel, "tiny-a", broker.HeaderKind, "chat",
		broker.HeaderBodyRef, otherID+"/request")
	// The id of a real job of another model: running it would run that job with this body.
	junk(queueA, body, broker.HeaderJobID, otherID, broker.HeaderModel, "tiny-a", broker.HeaderKind, "chat")
	const discarded = 5
	// A subject no model token makes.
	junk(broker.QueueSubject("zzz1"), body, broker.HeaderJobID, broker.NewID(), broker.HeaderModel, "tiny-a", broker.HeaderKind, "chat")
	job := tb.chat(t, "tiny-a", 2)
	if _, err := tb.b.Store.Submit(ctx, &broker.Job{ID: otherID, Model: "tiny-b", Kind: broker.KindChat}, []byte(chatBody("tiny-b", 1))); err != nil {
		t.Fatal(err)
	}

	logs := &warnings{}
	tb.start(t, worker.Config{Logger: slog.New(logs)})
	tb.waitState(t, job.ID, broker.StateDone)
	tb.waitState(t, otherID, broker.StateDone)
	tb.waitQueueEmpty(t)

	calls := inferenceCalls(tb.fake)
	slices.Sort(calls)
	if want := []string{"tiny-a:latest", "tiny-b:latest"}; !slices.Equal(calls, want) {
		t.Fatalf("inference calls %v, want %v (the two real jobs, once each)", calls, want)
	}
	if n := logs.count("unusable queue message removed"); n != discarded {
		t.Errorf("%d removals logged, want %d: %s", n, discarded, strings.Join(logs.msgs, "; "))
	}
	if n := logs.count("queue messages of no model removed"); n != 1 {
		t.Errorf("%d purges logged, want 1: %s", n, strings.Join(logs.msgs, "; "))
	}
}

// An idle worker woken by a message that is no job (here one without a valid job id)
// removes it at once too: it is not left taken until the queue's AckWait brings it back.
func TestUnusableMessageWakingAnIdleWorkerIsRemovedAtOnce(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.AckWait = time.Hour }))
	logs := &warnings{}
	tb.start(t, worker.Config{Logger: slog.New(logs), IdlePoll: time.Hour})
	first := tb.chat(t, "tiny-a", 1) // the worker ran it, and is idle after it
	tb.waitState(t, first.ID, broker.StateDone)
	tb.waitQueueEmpty(t)

	tokenA, _ := broker.ModelToken("tiny-a")
	m := nats.NewMsg(broker.QueueSubject(tokenA))
	m.Data = []byte(chatBody("tiny-a", 2))
	m.Header.Set(broker.HeaderJobID, "not-a-ulid")
	m.Header.Set(broker.HeaderModel, "tiny-a")
	m.Header.Set(broker.HeaderKind, "chat")
	if _, err := tb.b.JetStream(t).PublishMsg(ctxT(t), m); err != nil {
		t.Fatal(err)
	}
	tb.waitQueueEmpty(t) // an hour, were it left taken
	if n := logs.count("unusable queue message removed"); n != 1 {
		t.Fatalf("%d removals logged, want 1: %s", n, strings.Join(logs.msgs, "; "))
	}
}
