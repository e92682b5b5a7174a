package worker_test

import (
	"slices"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// Jobs published while the worker waits out an outage run in the pick rule's order once
// the target is back: a high job queued first before a low one published during the
// wait. The low job's wake-up, left in the channel, used to be fetched directly after the
// pause, so the newest publish ran first.
func TestJobsPublishedDuringAPauseRunInPickOrder(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := tb.polledInventory(t)
	tb.goSilent(t, inv)
	w := tb.start(t, worker.Config{Inventory: inv})
	high := tb.tagged(t, "H", "tiny-b", broker.PriorityHigh)
	eventually(t, 10*time.Second, "the worker paused for the outage", func() bool { return w.Paused() != nil })
	low := tb.tagged(t, "L", "tiny-a", broker.PriorityLow) // its wake-up is handed over as Submit publishes it
	tb.fake.SetDown(false)
	tb.waitState(t, high.ID, broker.StateDone)
	tb.waitState(t, low.ID, broker.StateDone)
	var ran []string
	for _, c := range tb.fake.Calls() {
		if m := tagRE.FindSubmatch(c.Body); m != nil {
			ran = append(ran, string(m[1]))
		}
	}
	if !slices.Equal(ran, []string{"H", "L"}) {
		t.Fatalf("ran %v, want [H L]: the high job first", ran)
	}
}
