package worker_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// An aged class's pick goes to a job that runs: a dead message at the head of its queue
// (here a job that ended while its message stayed, as after a crash between the two) is
// dropped without using the class's one pick per MaxWait, and the class's real job runs
// next, before the fresh high jobs. It used to wait another MaxWait behind them.
func TestADroppedDeliveryIsNoPick(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	const maxWait = 300 * time.Millisecond
	dead := tb.tagged(t, "D", "tiny-a", broker.PriorityLow)
	if _, _, err := tb.b.Store.Modify(ctxT(t), dead.ID, func(j *broker.Job) error { j.State = broker.StateCanceled; return nil }); err != nil {
		t.Fatal(err)
	}
	low := tb.tagged(t, "L", "tiny-a", broker.PriorityLow)
	// The low jobs wait past MaxWait (the condition itself, not a guess at a duration).
	eventually(t, 10*time.Second, "the low jobs waited MaxWait", func() bool { return time.Since(low.CreatedAt) > maxWait })
	var highs []*broker.Job
	for i := range 3 {
		highs = append(highs, tb.tagged(t, fmt.Sprintf("H%d", i), "tiny-a", broker.PriorityHigh))
	}
	tb.start(t, worker.Config{MaxWait: maxWait})
	for _, j := range append(highs, low) {
		tb.waitState(t, j.ID, broker.StateDone)
	}
	var ran []string
	for _, c := range tb.fake.Calls() {
		if m := tagRE.FindSubmatch(c.Body); m != nil {
			ran = append(ran, string(m[1]))
		}
	}
	if !slices.Equal(ran, []string{"L", "H0", "H1", "H2"}) {
		t.Fatalf("ran %v, want the aged low job first", ran)
	}
}
