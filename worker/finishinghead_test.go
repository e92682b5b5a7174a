package worker_test

import (
	"sync"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// The pick right after a job still finds that job's message at the head of its queue: its
// ack comes after its end is stored, in the background. Its model not counted loaded (a
// keep_alive 0 call unloaded it), runners go by the age of their oldest job, and the
// finished job's age put its queue first: the next job of its model ran before an older
// job of another model, which waited one job more. The pick looks past it.
func TestAFinishedJobsMessageDoesNotAgeItsQueue(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := tb.polledInventory(t)
	first := tb.submit(t, "tiny-a", broker.KindChat, `{"model":"tiny-a","messages":[{"role":"user","content":"first"}],"keep_alive":0}`)
	older := tb.chat(t, "tiny-b", 1)
	tb.submit(t, "tiny-a", broker.KindChat, `{"model":"tiny-a","messages":[{"role":"user","content":"younger"}],"keep_alive":0}`)

	// The first job's end waits for the next start: the pick after it sees its message.
	next := make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	var order []string
	cfg := worker.WithBeforeStart(worker.Config{Inventory: inv}, func(id string) {
		mu.Lock()
		order = append(order, id)
		mu.Unlock()
		if id != first.ID {
			once.Do(func() { close(next) })
		}
	})
	ctx := ctxT(t)
	tb.start(t, worker.WithBeforeStoreDone(cfg, func(id string) {
		if id == first.ID {
			select {
			case <-next:
			case <-ctx.Done():
			}
		}
	}))
	tb.waitEnded(t, older.ID)
	tb.waitQueueEmpty(t)
	mu.Lock()
	defer mu.Unlock()
	if len(order) < 2 || order[0] != first.ID || order[1] != older.ID {
		t.Errorf("starts %v, want %s then %s (the oldest waiting job; neither model loaded)", order, first.ID, older.ID)
	}
}
