package worker_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A worker runs only the models Config.Runs allows (its own Mac's, ADR-0029): an older job
// for another model stays queued while a newer one of its own runs, and runs once allowed.
func TestRunsLeavesOtherModelsQueued(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	var allowB atomic.Bool
	other := tb.chat(t, "tiny-b", 1) // older: without the filter it would run first
	own := tb.chat(t, "tiny-a", 2)
	tb.start(t, worker.Config{IdlePoll: 10 * time.Millisecond, Runs: func(_ context.Context, model string) bool {
		return model == "tiny-a:latest" || allowB.Load()
	}})
	tb.waitState(t, own.ID, broker.StateDone)
	if calls := inferenceCalls(tb.fake); slices.Contains(calls, "tiny-b:latest") {
		t.Fatalf("the worker ran a model it does not run: %v", calls)
	}
	if j, _, err := tb.b.Store.Get(ctxT(t), other.ID); err != nil || j.State != broker.StateQueued {
		t.Fatalf("the other model's job: %+v, %v; want queued", j, err)
	}
	allowB.Store(true)
	tb.waitState(t, other.ID, broker.StateDone)
}
