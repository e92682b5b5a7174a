package broker_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// A store that refuses every write for longer than an election (JetStream out of room
// here) says so in WriteHealth (foreman's /healthz), with what it answers, while the
// refusals go on; once a write is taken again, it no longer does.
func TestWriteHealthReportsAStoreThatRefusesWrites(t *testing.T) {
	t.Parallel()
	b, advance, giveBack := fullStore(t)
	ctx := ctxT(t)
	_, err := b.Store.Submit(ctx, &broker.Job{Model: "m", Kind: broker.KindChat}, []byte(`{}`))
	if !errors.Is(err, broker.ErrStorageFull) {
		t.Fatalf("submit to a full store: %v, want ErrStorageFull", err)
	}
	if err := b.Store.WriteHealth(); err != nil {
		t.Fatalf("write health at the first refusal: %v, want none yet (an election takes seconds)", err)
	}
	advance(31 * time.Second)
	_, err = b.Store.Submit(ctx, &broker.Job{Model: "m", Kind: broker.KindChat}, []byte(`{}`))
	if !errors.Is(err, broker.ErrStorageFull) {
		t.Fatalf("second submit to a full store: %v, want ErrStorageFull", err)
	}
	if err := b.Store.WriteHealth(); err == nil || !strings.Contains(err.Error(), "refused every write of job records for 31s") {
		t.Fatalf("write health after 31s of refusals: %v", err)
	}
	// No write for a while (longer than a paused worker's probe cycle) is no evidence
	// either way: nothing is reported then.
	advance(61 * time.Second)
	if err := b.Store.WriteHealth(); err != nil {
		t.Fatalf("write health with no write for 61s: %v, want none", err)
	}
	if _, err := b.Store.Submit(ctx, &broker.Job{Model: "m", Kind: broker.KindChat}, []byte(`{}`)); !errors.Is(err, broker.ErrStorageFull) {
		t.Fatalf("third submit to a full store: %v, want ErrStorageFull", err)
	}
	if err := b.Store.WriteHealth(); err == nil || !strings.Contains(err.Error(), "for 1m32s") {
		t.Fatalf("write health after a refusal again: %v, want the refusals since the first", err)
	}
	giveBack()
	if _, err := b.Store.Submit(ctx, &broker.Job{Model: "m", Kind: broker.KindChat}, []byte(`{}`)); err != nil {
		t.Fatalf("submit once there is room: %v", err)
	}
	if err := b.Store.WriteHealth(); err != nil {
		t.Fatalf("write health once a write was taken: %v", err)
	}
}

// A worker paused by a store that refuses writes probes it at most every 30 s, and a
// probe the store does not answer (a cluster that lost its quorum) takes up to its 10 s
// timeout: through that cycle the refusals go on, and WriteHealth (/healthz) must go on
// saying so, not turn healthy for the span of each probe.
func TestWriteHealthHoldsThroughAPausedWorkersProbeCycle(t *testing.T) {
	t.Parallel()
	b, advance, giveBack := fullStore(t)
	ctx := ctxT(t)
	defer giveBack()
	if err := b.Store.ProbeWrite(ctx); !errors.Is(err, broker.ErrStorageFull) {
		t.Fatalf("probe of a full store: %v, want ErrStorageFull", err)
	}
	for i := range 4 {
		// The worker's wait between probes (its cap), then the next probe's own time.
		advance(30*time.Second + 9*time.Second)
		if i > 0 {
			if err := b.Store.WriteHealth(); err == nil {
				t.Fatalf("probe cycle %d: write health while the next probe is under way: none, want the refusals", i)
			}
		}
		if err := b.Store.ProbeWrite(ctx); !errors.Is(err, broker.ErrStorageFull) {
			t.Fatalf("probe %d of a full store: %v, want ErrStorageFull", i, err)
		}
		if err := b.Store.WriteHealth(); err == nil {
			t.Fatalf("probe cycle %d: write health right after a refused probe: none, want the refusals", i)
		}
	}
}

// fullStore is a store on a server whose JetStream is full (FillStore, giveBack making
// room again), on a clock the test moves on with advance.
func fullStore(t *testing.T) (b *brokertest.Bundle, advance func(time.Duration), giveBack func()) {
	t.Helper()
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance = func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	b = brokertest.New(t,
		brokertest.WithNATS(func(c *natsd.Config) { c.MaxStore = 8 << 20 }),
		brokertest.WithStore(func(c *broker.Config) { c.Now = clock }))
	return b, advance, brokertest.FillStore(t, b.Conn)
}
