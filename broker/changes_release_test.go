package broker_test

import (
	"slices"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// releaseWithin is how soon a released consumer's changes must reach another process:
// far below the pin's TTL (2m) and the AckWait used here, with room for a loaded machine.
const releaseWithin = 20 * time.Second

// nextWithin is c's next change, failing the test when none comes within limit.
func nextWithin(t *testing.T, c *broker.ChangeConsumer, limit time.Duration) *broker.Change {
	t.Helper()
	type result struct {
		ch  *broker.Change
		err error
	}
	got := make(chan result, 1)
	go func() {
		ch, err := c.Next()
		got <- result{ch, err}
	}()
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("next change: %v", r.err)
		}
		return r.ch
	case <-time.After(limit):
		t.Fatalf("no change within %v", limit)
		return nil
	}
}

// pinnedClient is the pin id the server holds for the change consumers' group, "" for none.
func pinnedClient(t *testing.T, b *brokertest.Bundle, durable string) string {
	t.Helper()
	cons, err := b.JetStream(t).Consumer(ctxT(t), "KV_"+broker.JobsBucket, durable)
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range info.PriorityGroups {
		if g.PinnedClientID != "" {
			return g.PinnedClientID
		}
	}
	return ""
}

func setWorking(t *testing.T, st *broker.Store, id string) uint64 {
	t.Helper()
	_, rev, err := st.Modify(ctxT(t), id, func(j *broker.Job) error { j.State = broker.StateWorking; return nil })
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// A consumer released at a stop in order offers the changes it still held again (the
// one taken and handed back, those its pulls had buffered) at once and ahead of every
// later change, and gives its pin up: another process takes them within seconds, where
// they waited for AckWait (and the pin's TTL) and came after the job's later changes.
// Among themselves the server may reorder them (its redelivery queue sends an event it
// finds no pull for to its back); a job's earlier event after its later one is then
// superseded (ADR-0055).
func TestReleasedChangesComeFirst(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	cfg := broker.ChangeConsumerConfig{Durable: "changes", AckWait: time.Minute, MaxAckPending: 16}
	first, err := b.Store.ConsumeChanges(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Stop()
	j := submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	held := []uint64{0, setWorking(t, b.Store, j.ID), setWorking(t, b.Store, j.ID)}
	taken := nextWithin(t, first, releaseWithin)
	if taken.JobID != j.ID {
		t.Fatalf("took a change of %s, want %s", taken.JobID, j.ID)
	}
	held[0] = taken.Rev
	// The later two are in the first consumer's buffer or still with the server: either
	// way they must come after the first.
	first.Stop()
	taken.GiveBack()
	if err := first.Release(ctxT(t)); err != nil {
		t.Fatalf("release: %v", err)
	}
	later := setWorking(t, b.Store, j.ID)

	second, err := b.Store.ConsumeChanges(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Stop()
	var got []uint64
	for range len(held) + 1 {
		ch := nextWithin(t, second, releaseWithin)
		got = append(got, ch.Rev)
		if err := ch.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	if first := slices.Sorted(slices.Values(got[:len(held)])); !slices.Equal(first, held) || got[len(held)] != later {
		t.Fatalf("changes came as revisions %v, want %v (in any order), then %d", got, held, later)
	}
}

// The server unpins whichever client holds the pin: a process that no longer holds it
// releasing its consumer leaves the one that does pinned.
func TestReleaseLeavesAnotherProcesssPin(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	cfg := broker.ChangeConsumerConfig{Durable: "changes", AckWait: time.Minute, MaxAckPending: 16}
	old, err := b.Store.ConsumeChanges(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Stop()
	submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	if err := nextWithin(t, old, releaseWithin).Ack(); err != nil {
		t.Fatal(err)
	}
	oldPin := pinnedClient(t, b, cfg.Durable)
	if oldPin == "" {
		t.Fatal("the consumer that took a change is not pinned")
	}
	// It stops without a release; its pin is taken from it (as its TTL would).
	old.Stop()
	stream, err := b.JetStream(t).Stream(ctx, "KV_"+broker.JobsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.UnpinConsumer(ctx, cfg.Durable, "foreman"); err != nil {
		t.Fatal(err)
	}
	current, err := b.Store.ConsumeChanges(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer current.Stop()
	submit(t, b.Store, "tiny-a", `{"model":"tiny-a"}`)
	if err := nextWithin(t, current, releaseWithin).Ack(); err != nil {
		t.Fatal(err)
	}
	pin := pinnedClient(t, b, cfg.Durable)
	if pin == "" || pin == oldPin {
		t.Fatalf("pin %q after the hand-over, want a new one (old %q)", pin, oldPin)
	}

	if err := old.Release(ctx); err != nil {
		t.Fatalf("release: %v", err)
	}
	if got := pinnedClient(t, b, cfg.Durable); got != pin {
		t.Fatalf("pin %q after the old consumer's release, want %q still", got, pin)
	}
}
