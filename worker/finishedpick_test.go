package worker_test

import (
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// The pick right after a job still finds that job's message at the head of its queue:
// its ack comes once its end is stored, in the background. With nothing queued behind
// it, that pick took the queue for one whose next message had not reached its consumer
// yet: with the runner counted loaded it fetched the queue, asked the consumer's and the
// stream's counts when the fetch came up empty, and rechecked five times within 43 ms;
// with the runner not loaded it looked past the job to nothing and rechecked all the
// same. Each recheck is a look at the queue (a stream info request and reads), after
// nearly every job that came to an idle worker. Now one read past the job tells the
// worker that nothing waits, and it idles at once.
func TestThePickAfterAJobIdlesWhenNothingFollowsIt(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, body string
	}{
		{"runner loaded", `{"model":"tiny-a","messages":[{"role":"user","content":"only"}]}`},
		{"runner unloaded by keep_alive 0", `{"model":"tiny-a","messages":[{"role":"user","content":"only"}],"keep_alive":0}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tb := setup(t)
			inv := tb.polledInventory(t)
			j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
			var mu sync.Mutex
			fetched := false
			var waits []time.Duration // the loop's waits since the job was fetched
			idleAfter := make(chan struct{})
			var once sync.Once
			cfg := worker.Config{Inventory: inv, IdlePoll: time.Hour, Trace: func(id, stage string) {
				if id == j.ID && stage == worker.StageFetched {
					mu.Lock()
					fetched = true
					mu.Unlock()
				}
			}}
			cfg = worker.WithOnIdle(cfg, func(wait time.Duration) {
				mu.Lock()
				defer mu.Unlock()
				if fetched {
					waits = append(waits, wait)
					once.Do(func() { close(idleAfter) })
				}
			})
			ctx := ctxT(t)
			// The job's end is stored only once the loop waits again: the pick after it
			// meets its message still queued.
			tb.start(t, worker.WithBeforeStoreDone(cfg, func(id string) {
				if id != j.ID {
					return
				}
				select {
				case <-idleAfter:
				case <-ctx.Done():
				}
			}))
			if _, err := tb.b.Store.Submit(ctx, j, []byte(c.body)); err != nil {
				t.Fatal(err)
			}
			if got := tb.waitEnded(t, j.ID); got.State != broker.StateDone {
				t.Fatalf("job ended %s (%s), want done", got.State, got.Error)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(waits) == 0 || waits[0] < time.Minute {
				t.Errorf("after the job the loop waited %v, want the idle wait (IdlePoll) at once: nothing else was queued", waits)
			}
		})
	}
}
