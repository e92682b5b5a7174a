package worker

import (
	"fmt"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// An old normal backlog does not hold up a fresh high job until it is MaxWait old too:
// the aged class gets one pick per MaxWait, then yields to high.
func TestOrderOldBacklogYieldsToHigh(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	var msgs []broker.QueuedMessage
	for i := range 50 {
		msgs = append(msgs, broker.QueuedMessage{Token: queueKey(t, "tiny-a", "", ""), Seq: uint64(i + 1),
			Enqueued: now.Add(-10 * time.Minute), JobID: fmt.Sprint(i), Model: "tiny-a"})
	}
	msgs = append(msgs, broker.QueuedMessage{Token: queueKey(t, "tiny-a", "", broker.PriorityHigh), Seq: 51,
		Enqueued: now, JobID: "high", Model: "tiny-a", Priority: broker.PriorityHigh})
	a := runnerKey(t, "tiny-a")
	cost := fixedCosts{"tiny-a": {20 * time.Second, time.Second}}
	position := func(c choice) int {
		for _, p := range order(c, 1, msgs, now, cost) {
			if p.Msg.JobID == "high" {
				return p.Position
			}
		}
		t.Fatal("the high job is not in the order")
		return 0
	}
	c := choice{Loaded: []string{a}, Current: a, Consecutive: 1, MaxConsecutive: 8, MaxWait: 5 * time.Minute}
	// Normal never had a pick: it is starved and gets one, then high runs.
	if got := position(c); got != 2 {
		t.Fatalf("high job at position %d, want 2 (after the starved class's one pick)", got)
	}
	// Normal had a pick within MaxWait: high runs first.
	c.ClassPicked[broker.PriorityNormal.Rank()] = now.Add(-time.Minute)
	if got := position(c); got != 1 {
		t.Fatalf("high job at position %d, want 1", got)
	}
}

// The aged class is served once per MaxWait: a low backlog older than MaxWait gets a
// pick whenever it had none for MaxWait, and yields to normal in between.
func TestPlanAgedClassOncePerMaxWait(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	heads := []head{
		{Token: "a-lo", Runner: "a", Class: broker.PriorityLow, Seq: 1, Enqueued: now.Add(-time.Hour)},
		{Token: "a", Runner: "a", Seq: 9, Enqueued: now},
	}
	c := choice{Loaded: []string{"a"}, Current: "a", MaxWait: time.Minute, Heads: heads, Now: now}
	c.ClassPicked[broker.PriorityLow.Rank()] = now.Add(-30 * time.Second)
	if got := plan(c)[0]; got != "a" {
		t.Fatalf("low picked %v ago: first %q, want the normal queue", 30*time.Second, got)
	}
	c.ClassPicked[broker.PriorityLow.Rank()] = now.Add(-2 * time.Minute)
	if got := plan(c)[0]; got != "a-lo" {
		t.Fatalf("low not picked for 2m: first %q, want the low queue", got)
	}
}

// The worker records each class's last pick when it takes a job: plan's starvation rule
// reads it.
func TestTookRecordsClassPick(t *testing.T) {
	t.Parallel()
	w := &Worker{served: map[string]uint64{}}
	before := time.Now()
	w.took(queueKey(t, "tiny-a", "", broker.PriorityLow))
	if got := w.classPicked[broker.PriorityLow.Rank()]; got.Before(before) {
		t.Fatalf("low's last pick %v, want the take's time", got)
	}
	for _, k := range []broker.Priority{broker.PriorityHigh, broker.PriorityNormal} {
		if got := w.classPicked[k.Rank()]; !got.IsZero() {
			t.Fatalf("%s's last pick %v, want none", k, got)
		}
	}
}
