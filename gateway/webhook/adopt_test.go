package webhook

import (
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// secondForeman opens a store on b's server over a connection of its own, as another
// foreman process sharing the NATS does.
func secondForeman(t *testing.T, b *brokertest.Bundle) *broker.Store {
	t.Helper()
	nc, err := b.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	st, err := broker.Open(ctxT(t), broker.Config{Conn: nc})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// switchable is a receiver that answers 503 until up is set.
func switchable(t *testing.T) (*receiver, *atomic.Bool) {
	var up atomic.Bool
	return newReceiver(t, func(int, hit) int {
		if up.Load() {
			return http.StatusOK
		}
		return http.StatusServiceUnavailable
	}), &up
}

// A pending delivery stays with the foreman that retries it: a dispatcher starting
// meanwhile leaves it alone (it used to resume every stored one, and both sent it).
// Once that foreman is gone for good (its presence lapsed), the running dispatcher
// adopts it within ClaimEvery and delivers it, where it waited for some dispatcher's
// next start (ADR-0052).
func TestPendingDeliveryStaysWithItsForemanThenIsAdopted(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	first := secondForeman(t, b)
	rcv, up := switchable(t)
	cfg := fastConfig(first)
	cfg.Attempts, cfg.BaseDelay, cfg.MaxDelay = 1000, 50*time.Millisecond, 50*time.Millisecond
	stopFirst := runDispatcher(t, cfg)
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL, Events: []broker.State{broker.StateQueued}}})
	failed := rcv.next(t)
	eventually(t, 15*time.Second, "the first foreman's pending delivery stored", func() bool {
		p, err := first.PendingDelivery(ctxT(t), j.ID, revOf(t, failed.header.Get(HeaderID)))
		return err == nil && p.Owner == first.BootID()
	})

	var mu sync.Mutex
	var second []string // the second dispatcher's attempts
	cfg2 := fastConfig(b.Store)
	cfg2.ClaimEvery = 50 * time.Millisecond
	cfg2.OnAttempt = func(outcome string) {
		mu.Lock()
		second = append(second, outcome)
		mu.Unlock()
	}
	runDispatcher(t, cfg2)
	// The first retries every 50ms: three more of its attempts span more than the
	// second's first attempt of a resumed delivery would wait (it is due at once).
	for range 3 {
		rcv.next(t)
	}
	mu.Lock()
	if len(second) != 0 {
		t.Fatalf("the dispatcher that started made %d attempts (%v) of a delivery another foreman holds", len(second), second)
	}
	mu.Unlock()

	stopFirst()
	presence, err := b.JetStream(t).KeyValue(ctxT(t), broker.PresenceBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := presence.Delete(ctxT(t), "boot."+first.BootID()); err != nil { // its presence lapsed
		t.Fatal(err)
	}
	for len(rcv.hits) > 0 { // attempts made while it stopped
		<-rcv.hits
	}
	up.Store(true)
	h := rcv.next(t)
	if h.header.Get(HeaderID) != failed.header.Get(HeaderID) {
		t.Fatalf("delivered %s, want the first foreman's event %s", h.header.Get(HeaderID), failed.header.Get(HeaderID))
	}
	verify(t, h)
	waitNoPending(t, b.Store)
	mu.Lock()
	defer mu.Unlock()
	if len(second) != 1 || second[0] != "ok" {
		t.Fatalf("the second dispatcher's attempts: %v, want the one that delivered", second)
	}
}
