package worker_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// keptTTL is the job TTL of the tests below: StaleAge 9 s, an expiry look every 1.5 s.
const keptTTL = 12 * time.Second

// keptStore is the store configuration of the tests below, with a queue of places.
func keptStore(places int64) func(*broker.Config) {
	return func(c *broker.Config) {
		c.JobTTL, c.AckWait, c.MaxQueue, c.MaxAttempts = keptTTL, 3*time.Second, places, 3
	}
}

// sawStale returns an afterExpiry hook that closes the channel it returns at the end of
// the first look that found job id's message stale.
func sawStale(id string) (func([]string), <-chan struct{}) {
	seen := make(chan struct{})
	var once atomic.Bool
	return func(stale []string) {
		if slices.Contains(stale, id) && once.CompareAndSwap(false, true) {
			close(seen)
		}
	}, seen
}

// expiryOnly starts, on another store of the bundle's NATS (another foreman of a shared
// NATS), a worker that runs no job: only its expiry looks at the queue. hook is told of
// each look.
func (tb *testBundle) expiryOnly(t *testing.T, store func(*broker.Config), hook func([]string)) {
	t.Helper()
	tb.expiryOnlyWith(t, store, func(cfg worker.Config) worker.Config { return worker.WithAfterExpiry(cfg, hook) })
}

// expiryOnlyWith is expiryOnly with the worker's Config made by with.
func (tb *testBundle) expiryOnlyWith(t *testing.T, store func(*broker.Config), with func(worker.Config) worker.Config) {
	t.Helper()
	cfg := broker.Config{Conn: tb.b.Conn}
	store(&cfg)
	other, err := broker.Open(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The bundle's foreman stays present however long the test takes (a store announces
	// itself once as it opens, for a PresenceTTL).
	ctx, cancel := context.WithCancel(context.Background())
	announced := make(chan error, 1)
	go func() { announced <- tb.b.Store.Announce(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-announced
	})
	tb.startOn(t, other, with(worker.Config{
		Runs: func(context.Context, string) bool { return false },
	}))
}

// A retry kept for a full queue (ADR-0100) on one foreman of a shared NATS, whose message,
// not renewed while kept, passed the expiry's age: this foreman's expiry leaves it
// (ADR-0123), but another foreman's, which sees only the record (retrying) and the stale
// message, ended it failed, "expired: waited in the queue for the job TTL (12s), tried
// once", and at its due the keeper dropped it as a job that had ended. The record names
// the foreman whose attempt ran from that very message, which is present: that one's
// expiry judges it.
func TestAKeptRetryIsNotExpiredByAnotherForeman(t *testing.T) {
	t.Parallel()
	store := keptStore(1)
	tb := setup(t, brokertest.WithStore(store)) // a shared store: not the embedded server's own
	j := tb.chat(t, "tiny-a", 1)
	tb.fake.FailNext(1, ollamatest.DropMidStream) // the first attempt, a retry
	hook, seen := sawStale(j.ID)
	tb.expiryOnly(t, store, hook)
	var requeues atomic.Int32
	ended := make(chan struct{}) // the test's end: a failed one holds no requeue
	// Kept past the expiry's age (9 s): its due's requeue waits for the other foreman's
	// look at the stale message.
	cfg := worker.WithRequeueFault(worker.Config{RetryDelay: keptTTL - keptTTL/8}, func(id string) error {
		if id == j.ID && requeues.Add(1) == 2 {
			select {
			case <-seen:
			case <-ended:
			}
		}
		return nil
	})
	tb.start(t, cfg)
	t.Cleanup(func() { close(ended) }) // before the worker's stop
	if got := tb.waitEnded(t, j.ID); got.State != broker.StateDone || got.Attempt != 2 {
		t.Fatalf("kept retry ended %s (%s) at attempt %d, want done at 2", got.State, got.Error, got.Attempt)
	}
	select {
	case <-seen:
	default:
		t.Error("the other foreman's expiry never looked at the kept retry's stale message")
	}
}

// A failed attempt's retry between its retrying write and its requeue (a message that may
// reach the job TTL before a NAK's delay ends, or a last delivery), which in a full queue
// is refused and keeps the delivery (park, ADR-0100): the record says retrying and the
// message is past the expiry's age, so a look then ended the job "expired: waited in the
// queue for the job TTL", and the requeue found it ended and dropped the delivery, though
// the job had run a moment before, and its requeue would have given it a new message or
// kept it to run again from it. Neither this foreman's expiry (the worker keeps the
// delivery unsettled) nor another foreman's (the record names the present foreman whose
// attempt ran from that message) ends it now. The requeue waits until a look has met the
// stale message.
func TestARetryIsNotExpiredBeforeItsRequeue(t *testing.T) {
	t.Parallel()
	for _, queue := range []struct {
		name   string
		places int64
	}{{"full queue", 1}, {"queue with room", 2}} {
		for _, expiry := range []string{"this foreman's", "another foreman's"} {
			t.Run(queue.name+"/"+expiry, func(t *testing.T) {
				t.Parallel()
				store := keptStore(queue.places)
				tb := setup(t, brokertest.WithStore(store))
				j := tb.chat(t, "tiny-a", 1)
				tb.fake.FailNext(1, ollamatest.DropMidStream) // the first attempt, a retry
				hook, seen := sawStale(j.ID)
				cfg := worker.Config{RetryDelay: time.Second}
				if expiry == "this foreman's" {
					cfg = worker.WithAfterExpiry(cfg, hook)
				} else {
					tb.expiryOnly(t, store, hook)
				}
				// Its retry is requeued, not NAKed (as one whose message may reach the TTL
				// first), and that requeue waits for a look at its stale message.
				cfg = worker.WithOutlivesQueue(cfg, func(id string) bool { return id == j.ID })
				var requeues atomic.Int32
				ended := make(chan struct{}) // the test's end: a failed one holds no requeue
				cfg = worker.WithRequeueFault(cfg, func(id string) error {
					if id == j.ID && requeues.Add(1) == 1 {
						select {
						case <-seen:
						case <-ended:
						}
					}
					return nil
				})
				tb.start(t, cfg)
				t.Cleanup(func() { close(ended) }) // before the worker's stop
				if got := tb.waitEnded(t, j.ID); got.State != broker.StateDone || got.Attempt != 2 {
					t.Fatalf("retry ended %s (%s) at attempt %d, want done at 2", got.State, got.Error, got.Attempt)
				}
				select {
				case <-seen:
				default:
					t.Errorf("%s expiry never looked at the retry's stale message", expiry)
				}
			})
		}
	}
}
