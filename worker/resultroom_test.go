package worker_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A large async result refused for want of room while the store still takes a record's
// write (JetStream's storage limits refuse a write by its size: a store near its limit)
// is handed back, as a put that timed out is, not tried on: tried on, it held the worker,
// the next job's end waiting behind it, for as long as the store lacked the room, with
// the next job shown working and the rest queued. The jobs behind it run; it runs as
// often as its attempts allow.
func TestAsyncResultRefusedForRoomWhileRecordsFitIsHandedBack(t *testing.T) {
	t.Parallel()
	var puts atomic.Int32
	tb := setup(t)
	big := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	tb.start(t, worker.WithMaxAttempts(worker.WithResultFault(worker.Config{}, func(id string) error {
		if id != big.ID {
			return nil
		}
		puts.Add(1)
		return fmt.Errorf("broker: put artifact: %w: insufficient storage resources available", broker.ErrStorageFull)
	}), 2))
	if _, err := tb.b.Store.Submit(ctxT(t), big, []byte(largeChatBody)); err != nil {
		t.Fatal(err)
	}
	next := tb.chat(t, "tiny-a", 1)
	after := tb.chat(t, "tiny-a", 2)
	tb.waitState(t, next.ID, broker.StateDone)
	tb.waitState(t, after.ID, broker.StateDone)
	rec := tb.waitState(t, big.ID, broker.StateFailed)
	tb.waitQueueEmpty(t)
	if n := puts.Load(); n != 2 {
		t.Errorf("the result put was tried %d times, want once a run (2)", n)
	}
	if !strings.HasPrefix(rec.Error, "attempts exhausted: ") {
		t.Errorf("failed with %q, want attempts exhausted", rec.Error)
	}
}
