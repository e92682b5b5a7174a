package broker_test

import (
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

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

// IdempotencyKeyClaim reads the binding in force: none for a free key, the claim as stored
// while it stands, none again once it is released.
func TestIdempotencyKeyClaimReadsTheBinding(t *testing.T) {
	t.Parallel()
	st := brokertest.New(t).Store
	ctx := ctxT(t)
	const key = "a key"
	if got, err := st.IdempotencyKeyClaim(ctx, key); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("free key: %+v, %v; want ErrNotFound", got, err)
	}
	claim := broker.IdempotencyClaim{JobID: broker.NewID(), MembersSHA256: "m", Until: time.Now().Add(time.Minute).UTC()}
	if _, created, err := st.ClaimIdempotencyKey(ctx, key, claim); err != nil || !created {
		t.Fatalf("claim: %v %v", created, err)
	}
	got, err := st.IdempotencyKeyClaim(ctx, key)
	if err != nil || got.JobID != claim.JobID || got.MembersSHA256 != "m" || !got.Until.Equal(claim.Until) || got.Claimed.IsZero() {
		t.Fatalf("claimed key: %+v, %v; want %+v with the time it was stored", got, err, claim)
	}
	if err := st.ReleaseIdempotencyKey(ctx, key, claim.JobID); err != nil {
		t.Fatal(err)
	}
	if got, err := st.IdempotencyKeyClaim(ctx, key); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("released key: %+v, %v; want ErrNotFound", got, err)
	}
}

// Every write of a keyed job's record, a Refresh of a long run's included, stamps its
// claim anew (a later revision, still naming the job), so the claim lives as long as the
// record; a claim released meanwhile is never brought back by one.
func TestIdempotencyClaimIsKeptWithItsRecord(t *testing.T) {
	t.Parallel()
	var ahead atomic.Int64 // the store's clock, moved on to make the record due for a refresh
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) {
		c.Now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	}))
	st, kv, ctx := b.Store, b.JobRecords(t), ctxT(t)
	const key = "a key"
	id := broker.NewID()
	if _, created, err := st.ClaimIdempotencyKey(ctx, key, broker.IdempotencyClaim{JobID: id, BodySHA256: "x"}); err != nil || !created {
		t.Fatalf("claim: %v %v", created, err)
	}
	claimKey := "idem." + broker.IdempotencyRef(key)
	stamped := func(what string, after uint64) uint64 {
		t.Helper()
		e, err := kv.Get(ctx, claimKey)
		if err != nil {
			t.Fatalf("after %s: %v", what, err)
		}
		var c broker.IdempotencyClaim
		if err := json.Unmarshal(e.Value(), &c); err != nil || c.JobID != id || c.BodySHA256 != "x" || e.Revision() <= after {
			t.Fatalf("after %s: claim %s at revision %d (%v), want it naming %s past revision %d", what, e.Value(), e.Revision(), err, id, after)
		}
		return e.Revision()
	}
	rev := stamped("the claim", 0)
	if _, err := st.Submit(ctx, &broker.Job{ID: id, Model: "tiny-a", Kind: broker.KindChat, Idempotency: broker.IdempotencyRef(key)}, []byte(`{"model":"tiny-a"}`)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Modify(ctx, id, func(j *broker.Job) error { j.State = broker.StateWorking; return nil }); err != nil {
		t.Fatal(err)
	}
	rev = stamped("the start", rev)
	if _, err := st.Cancel(ctx, id, "asked"); err != nil { // a write that keeps the state
		t.Fatal(err)
	}
	rev = stamped("a cancel request", rev)
	ahead.Store(int64(st.Config().JobTTL))
	if ok, err := st.Refresh(ctx, id); err != nil || !ok {
		t.Fatalf("refresh: %v %v", ok, err)
	}
	stamped("a refresh", rev)

	if err := st.ReleaseIdempotencyKey(ctx, key, id); err != nil {
		t.Fatal(err)
	}
	ahead.Store(2 * int64(st.Config().JobTTL))
	if ok, err := st.Refresh(ctx, id); err != nil || !ok {
		t.Fatalf("refresh: %v %v", ok, err)
	}
	if _, _, err := st.Modify(ctx, id, func(j *broker.Job) error { j.State = broker.StateDone; return nil }); err != nil {
		t.Fatal(err)
	}
	if e, err := kv.Get(ctx, claimKey); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("released claim after writes of its record: %v (%v), want it gone", e, err)
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
