package worker_test

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// An attempt's last writes slower than the queue's AckWait (a store in trouble) keep
// the delivery: the run's keep-alive goes on after the call, through the wait for the
// attempt's start write and the end's writes, until the delivery is settled. Before,
// the run stopped its ticks as the call ended; an async job's failed end, stored then
// and there, had none at all, and another foreman, idle meanwhile, got the delivery of
// a job still ending here.
func TestSlowLastWritesKeepTheDelivery(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		hold func(cfg worker.Config, slow func(id string)) worker.Config
	}{
		{"failed end", func(cfg worker.Config, slow func(string)) worker.Config {
			return worker.WithEndFault(cfg, func(id string, state broker.State) error {
				if state == broker.StateFailed {
					slow(id)
				}
				return nil
			})
		}},
		{"start write", func(cfg worker.Config, slow func(string)) worker.Config {
			return worker.WithBeforeStart(cfg, slow)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tb := setup(t, brokertest.WithStore(outageStore))
			entered, othersUp := make(chan struct{}), make(chan struct{})
			var once sync.Once
			// The write is held for twice the AckWait once the other foreman looks for
			// work, as a store that takes that long would.
			slow := func(string) {
				once.Do(func() {
					close(entered)
					<-othersUp
					<-time.After(2 * outageAckWait)
				})
			}
			tb.start(t, tc.hold(worker.Config{}, slow))
			j := tb.chat(t, "tiny-embed", 1) // chat on an embedding model: 400, no frame
			<-entered
			other := idleForeman(t, tb)
			close(othersUp)

			got := tb.waitState(t, j.ID, broker.StateFailed)
			tb.waitQueueEmpty(t)
			if !strings.Contains(got.Error, "does not support chat") || got.Attempt != 1 {
				t.Errorf("job failed at attempt %d with %q; want attempt 1 with the target's 400", got.Attempt, got.Error)
			}
			if n := len(inferenceCalls(tb.fake)); n != 1 {
				t.Errorf("target called %d times, want once", n)
			}
			if n := len(inferenceCalls(other)); n != 0 {
				t.Errorf("the other foreman's target called %d times: the delivery went to it", n)
			}
		})
	}
}

// A delivery given back gets no tick after its NAK, though its run goes on (the worker
// waits for its gone target, in the run, after the NAK): nats.go refuses an ack of a
// message acked or NAKed already, so each such tick was a failure logged ("extend job ack
// deadline"), and one that raced the NAK past nats.go's check went out after it and held
// the job back from the other foreman for another ack wait. The job goes to the other
// foreman after its NAK's delay (three ticks long here).
func TestAGivenBackDeliveryGetsNoTick(t *testing.T) {
	t.Parallel()
	store := func(c *broker.Config) { c.AckWait = outageAckWait }
	tb := setup(t, brokertest.WithStore(store))
	tb.fake.SetDown(true)
	logs := &logged{}
	tb.start(t, worker.Config{RetryDelay: outageAckWait, Logger: slog.New(logs)})
	j := tb.chat(t, "tiny-a", 1)
	tb.waitState(t, j.ID, broker.StateRetrying) // NAKed; the worker now waits for its target
	other := idleForeman(t, tb, store)

	tb.waitState(t, j.ID, broker.StateDone)
	if n := len(inferenceCalls(other)); n != 1 {
		t.Errorf("the other foreman's target called %d times, want once", n)
	}
	if n := logs.count("WARN extend job ack deadline"); n != 0 {
		t.Errorf("the first foreman ticked after its NAK: %s", logs)
	}
}

// A record read answered slower than the queue's AckWait (a store in trouble, yet
// answering) keeps the delivery: it is kept in progress from its fetch, through the
// reads that decide whether the job runs, not from its run's start only. Before, nothing
// ticked until the run began, and another foreman, idle meanwhile, got the delivery and
// ran the job too.
func TestASlowRecordReadKeepsTheDelivery(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(outageStore))
	entered, othersUp := make(chan struct{}), make(chan struct{})
	var once sync.Once
	// The first read of the record is answered after twice the AckWait, once the other
	// foreman looks for work.
	tb.start(t, worker.WithRecordFault(worker.Config{}, func(string) error {
		once.Do(func() {
			close(entered)
			<-othersUp
			<-time.After(2 * outageAckWait)
		})
		return nil
	}))
	j := tb.chat(t, "tiny-a", 1)
	<-entered
	other := idleForeman(t, tb)
	close(othersUp)

	got := tb.waitEnded(t, j.ID)
	tb.waitQueueEmpty(t)
	if got.State != broker.StateDone || got.Attempt != 1 {
		t.Errorf("job ended %s at attempt %d (%q); want done at attempt 1", got.State, got.Attempt, got.Error)
	}
	if n := len(inferenceCalls(tb.fake)); n != 1 {
		t.Errorf("target called %d times, want once", n)
	}
	if n := len(inferenceCalls(other)); n != 0 {
		t.Errorf("the other foreman's target called %d times: the delivery went to it", n)
	}
}
