package broker_test

import (
	"sync"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

func TestIdempotencyKeyOneWinner(t *testing.T) {
	t.Parallel()
	st := brokertest.New(t).Store
	ctx := ctxT(t)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		winners int
		bound   = map[string]bool{}
	)
	for range 8 {
		wg.Go(func() {
			got, created, err := st.ClaimIdempotencyKey(ctx, "key with spaces/and.dots", broker.IdempotencyClaim{JobID: broker.NewID(), BodySHA256: "x"})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if created {
				winners++
			}
			bound[got.JobID] = true
		})
	}
	wg.Wait()
	if winners != 1 || len(bound) != 1 {
		t.Fatalf("%d winners, %d distinct jobs; want 1 and 1", winners, len(bound))
	}
	var id string
	for k := range bound {
		id = k
	}
	// Only the owner's release frees the key; then a new claim wins.
	if err := st.ReleaseIdempotencyKey(ctx, "key with spaces/and.dots", broker.NewID()); err != nil {
		t.Fatal(err)
	}
	if got, created, _ := st.ClaimIdempotencyKey(ctx, "key with spaces/and.dots", broker.IdempotencyClaim{JobID: broker.NewID()}); created || got.JobID != id {
		t.Fatalf("a foreign release freed the key: %v %v", created, got)
	}
	if err := st.ReleaseIdempotencyKey(ctx, "key with spaces/and.dots", id); err != nil {
		t.Fatal(err)
	}
	if _, created, _ := st.ClaimIdempotencyKey(ctx, "key with spaces/and.dots", broker.IdempotencyClaim{JobID: broker.NewID()}); !created {
		t.Fatal("released key could not be claimed again")
	}
	// Keys are not jobs.
	if jobs, _, err := st.List(ctx, broker.ListOptions{}); err != nil || len(jobs) != 0 {
		t.Fatalf("List sees %d jobs (%v)", len(jobs), err)
	}
}

func TestDeliveryLog(t *testing.T) {
	t.Parallel()
	st := brokertest.New(t).Store
	ctx := ctxT(t)
	id := broker.NewID()
	if log, err := st.Deliveries(ctx, id); err != nil || len(log) != 0 {
		t.Fatalf("empty log: %v %v", log, err)
	}
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Go(func() {
			if err := st.LogDelivery(ctx, id, broker.DeliveryAttempt{WebhookID: id + "-1", Attempt: i + 1, Outcome: broker.OutcomeRetry}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	log, err := st.Deliveries(ctx, id)
	if err != nil || len(log) != 5 {
		t.Fatalf("concurrent appends kept %d of 5 (%v)", len(log), err)
	}
	if _, err := st.Deliveries(ctx, "bad"); err == nil {
		t.Fatal("bad id accepted")
	}
}
