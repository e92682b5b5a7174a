package worker

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// Two publishes reach the idle loop as one wake-up, the newer replacing the older: the
// pick rule then chooses between their jobs (the high one, published first), where the
// loop used to fetch the newest publish's queue.
func TestAReplacedWakeUpGoesByThePickRule(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := brokertest.New(t)
	w, fake := testWorker(t, b, Config{})
	var fired atomic.Bool
	ids := make(chan [2]string, 1)
	errc := make(chan error, 1)
	w.cfg.onIdle = func(d time.Duration) {
		// The loop's first long wait, before it waits: both submits hand their wake-ups
		// over as they publish, the second replacing the first.
		if d < time.Second || !fired.CompareAndSwap(false, true) {
			return
		}
		var got [2]string
		for i, j := range []*broker.Job{
			{ID: broker.NewID(), Model: "tiny-b", Kind: broker.KindChat, Priority: broker.PriorityHigh},
			{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Priority: broker.PriorityLow},
		} {
			if _, err := b.Store.Submit(ctx, j, []byte(`{"model":"`+j.Model+`","messages":[{"role":"user","content":"x"}]}`)); err != nil {
				errc <- err
				return
			}
			got[i] = j.ID
		}
		ids <- got
	}
	runLoop(t, w)
	var both [2]string
	select {
	case both = <-ids:
	case err := <-errc:
		t.Fatal(err)
	case <-ctx.Done():
		t.Fatal("the loop never waited")
	}
	until(t, 10*time.Second, "both jobs done", func() bool {
		for _, id := range both {
			if j, _, err := b.Store.Get(ctx, id); err != nil || j.State != broker.StateDone {
				return false
			}
		}
		return true
	})
	var ran []string
	for _, c := range fake.Calls() {
		ran = append(ran, c.Model)
	}
	if ran = slices.DeleteFunc(ran, func(m string) bool { return m == "" }); !slices.Equal(ran, []string{"tiny-b:latest", "tiny-a:latest"}) {
		t.Fatalf("target calls for %v, want the high tiny-b job's first", ran)
	}
}

// A job's own second wake-up (its submit's announcement, then NATS's copy of the publish)
// replaces nothing: the wake-up stays fresh, and keeps the early call and the direct
// fetch of ADR-0034. Another job's does replace, and goes by the pick rule.
func TestPokeReplacesOnlyAnotherJobsWakeUp(t *testing.T) {
	t.Parallel()
	w := &Worker{wake: make(chan wakeup, 1)}
	w.poke(wakeup{token: "q", jobID: "a", fresh: true})
	w.poke(wakeup{token: "q", jobID: "a", fresh: true})
	if u := <-w.wake; !u.fresh || u.replaced {
		t.Fatalf("the same job's second wake-up: %+v, want fresh and replacing nothing", u)
	}
	w.poke(wakeup{token: "q", jobID: "a", fresh: true})
	w.poke(wakeup{token: "r", jobID: "b", fresh: true})
	if u := <-w.wake; u.jobID != "b" || u.fresh || !u.replaced {
		t.Fatalf("another job's wake-up: %+v, want b's, replacing a's", u)
	}
	// Once replaced, a later copy of the same job keeps saying so: a's job still waits.
	w.poke(wakeup{token: "q", jobID: "a", fresh: true})
	w.poke(wakeup{token: "r", jobID: "b", fresh: true})
	w.poke(wakeup{token: "r", jobID: "b", fresh: true})
	if u := <-w.wake; !u.replaced {
		t.Fatalf("b's copy after it replaced a's: %+v, want replaced still", u)
	}
}
