package broker_test

import (
	"context"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// The watchers of single jobs (the worker watches every job it runs) and of every job
// share one subscription: none is made or dropped per job. Each watcher still gets its
// own job's events alone, in order, and none after its stop.
func TestJobWatchersShareOneSubscription(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before := b.Conn.NumSubscriptions()

	all := make(chan *broker.Job, 100)
	stopAll, err := b.Store.OnJobEvents(func(j *broker.Job) { all <- j })
	if err != nil {
		t.Fatal(err)
	}
	defer stopAll()
	ids := make([]string, 5)
	chans := make([]chan *broker.Job, len(ids))
	stops := make([]func(), len(ids))
	for i := range ids {
		ids[i], chans[i] = broker.NewID(), make(chan *broker.Job, 10)
		ch := chans[i]
		stops[i], err = b.Store.OnJobChange(ids[i], func(j *broker.Job) { ch <- j })
		if err != nil {
			t.Fatal(err)
		}
		defer stops[i]()
	}
	if got := b.Conn.NumSubscriptions() - before; got != 1 {
		t.Errorf("%d subscriptions for the watchers of %d jobs and of every job, want 1", got, len(ids))
	}

	next := func(ch chan *broker.Job, what string) *broker.Job {
		t.Helper()
		select {
		case j := <-ch:
			return j
		case <-ctx.Done():
			t.Fatalf("no event: %s", what)
			return nil
		}
	}
	for _, id := range ids {
		if _, err := b.Store.Submit(ctx, &broker.Job{ID: id, Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a","messages":[]}`)); err != nil {
			t.Fatal(err)
		}
	}
	for i, id := range ids {
		if j := next(chans[i], "queued of "+id); j.ID != id || j.State != broker.StateQueued {
			t.Fatalf("watcher of %s got %s %s, want its queued event", id, j.ID, j.State)
		}
	}
	stops[0]()
	for _, id := range ids {
		if _, err := b.Store.Cancel(ctx, id, "test"); err != nil {
			t.Fatal(err)
		}
	}
	// Every job's watcher sees its two events; the canceled events of all jobs reached the
	// watcher of every job, so the stopped watcher had its chance to get one.
	seen := map[string][]broker.State{}
	for len(seen) < len(ids) || func() bool {
		for _, s := range seen {
			if len(s) < 2 {
				return true
			}
		}
		return false
	}() {
		j := next(all, "every job's events")
		seen[j.ID] = append(seen[j.ID], j.State)
	}
	for i, id := range ids[1:] {
		if j := next(chans[i+1], "canceled of "+id); j.ID != id || j.State != broker.StateCanceled {
			t.Fatalf("watcher of %s got %s %s, want its canceled event", id, j.ID, j.State)
		}
	}
	if len(chans[0]) != 0 {
		t.Errorf("a stopped watcher got %d more events", len(chans[0]))
	}
	for id, states := range seen {
		if len(states) != 2 || states[0] != broker.StateQueued || states[1] != broker.StateCanceled {
			t.Errorf("every job's watcher saw %v for %s, want queued, canceled", states, id)
		}
	}
}
