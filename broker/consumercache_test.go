package broker_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// Queue keys come from callers: a program name (or load options) new with every job
// makes a new queue each time. The store's cache of queue consumers forgets those not
// fetched from for a while, instead of growing for the process's life.
func TestQueueConsumerCacheIsBounded(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.Now = clock }))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const jobs = 300
	for i := range jobs {
		j, err := b.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat, Program: fmt.Sprintf("run-%d", i)}, []byte(`{"model":"tiny-a"}`))
		if err != nil {
			t.Fatal(err)
		}
		k, err := broker.KeyOf(j, nil)
		if err != nil {
			t.Fatal(err)
		}
		d, err := b.Store.Next(ctx, k.String())
		if err != nil || d == nil {
			t.Fatalf("fetch job %d: %v, %v", i, d, err)
		}
		mu.Lock()
		now = now.Add(time.Second) // a job a second
		mu.Unlock()
	}
	if n := b.Store.CachedConsumers(); n > 256 {
		t.Fatalf("%d queue consumers kept after %d one-job queues, want at most 256", n, jobs)
	}
}
