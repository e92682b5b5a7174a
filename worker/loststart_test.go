package worker_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// An async job's start write stored, with its answer lost (a timeout while a cluster
// elects a leader), hands the job back unrun: the attempt it counted is given back. With
// FOREMAN_MAX_ATTEMPTS=1 its next delivery failed it "attempts exhausted: interrupted"
// though the target never answered it; here it runs, and ends done at attempt 1. Both
// with the start stored before the call (a shared NATS) and riding with it.
func TestAStartStoredWithItsAnswerLostSpendsNoAttempt(t *testing.T) {
	for _, before := range []bool{true, false} {
		name := map[bool]string{true: "start before call", false: "start with call"}[before]
		t.Run(name, func(t *testing.T) {
			tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 1 }))
			var lose atomic.Bool
			lose.Store(true)
			tb.start(t, worker.WithStartAnswerLost(worker.Config{StartBeforeCall: before}, func(string) bool {
				return lose.CompareAndSwap(true, false)
			}))
			j := tb.chat(t, "tiny-a", 0)
			rec := tb.waitEnded(t, j.ID)
			if rec.State != broker.StateDone || rec.Attempt != 1 {
				t.Fatalf("job ended %s at attempt %d (%q), want done at attempt 1", rec.State, rec.Attempt, rec.Error)
			}
			if lose.Load() {
				t.Fatal("no start write's answer was lost")
			}
		})
	}
}

// A start write stored with its answer lost, whose give-back the store refuses for
// longer than the give-back is tried (terminalWait), still spends no attempt: the
// give-back is tried again once the store takes writes (the worker paused for it
// meanwhile, the delivery held). Before, the record was left saying the job ran here at
// attempt 1, and with FOREMAN_MAX_ATTEMPTS=1 its next delivery failed it "attempts
// exhausted: interrupted" without its target ever being called.
func TestALostStartGivenBackAfterALongRefusalSpendsNoAttempt(t *testing.T) {
	t.Parallel()
	const wait = time.Second // the give-back is tried that long
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 1 }))
	var lose atomic.Bool
	lose.Store(true)
	cfg := worker.WithStartAnswerLost(worker.Config{}, func(string) bool { return lose.CompareAndSwap(true, false) })
	cfg = worker.WithTerminalWait(cfg, wait)
	var mu sync.Mutex
	var first time.Time
	// The store refuses the give-back for one and a half times as long as it is tried.
	cfg = worker.WithGiveBackFault(cfg, func(string) error {
		mu.Lock()
		defer mu.Unlock()
		if first.IsZero() {
			first = time.Now()
		}
		if time.Since(first) < wait*3/2 {
			return fmt.Errorf("injected: %w", broker.ErrUnavailable)
		}
		return nil
	})
	tb.start(t, cfg)
	j := tb.chat(t, "tiny-a", 0)
	rec := tb.waitEnded(t, j.ID)
	if rec.State != broker.StateDone || rec.Attempt != 1 {
		t.Fatalf("job ended %s at attempt %d (%q), want done at attempt 1", rec.State, rec.Attempt, rec.Error)
	}
	mu.Lock()
	defer mu.Unlock()
	if first.IsZero() {
		t.Fatal("no give-back was tried")
	}
}
