package broker_test

import (
	"bytes"
	"context"
	"runtime/debug"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A submit of this Store wakes its OnQueued callbacks itself, before it publishes (an
// idle worker of the same process starts at once), and its copy from NATS comes after
// that all the same (the one that comes in the stream's order). A message published by
// anyone else comes through NATS, body and all.
func TestOnQueuedGetsThisStoresSubmitsFirstAndFromNATSToo(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	type call struct {
		p      broker.Published
		direct bool // called by the submit itself, not by the connection's dispatcher
	}
	calls := make(chan call, 1024)
	stop, err := b.Store.OnQueued(func(p broker.Published) {
		calls <- call{p, bytes.Contains(debug.Stack(), []byte("broker.(*Store).Submit("))}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	const jobs = 30
	body := `{"model":"tiny-a","messages":[]}`
	ids := map[string]bool{}
	for range jobs {
		j, err := b.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		ids[j.ID] = true
	}
	// A message of another publisher, after every submit: when it comes, every echo
	// has come before it (one subscription delivers in the server's order).
	marker := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	b.PublishBare(t, marker, body)

	seen := map[string]int{}
	for {
		var c call
		select {
		case c = <-calls:
		case <-ctx.Done():
			t.Fatalf("the other publisher's message never came; seen %v", seen)
		}
		if c.p.JobID == marker.ID {
			if c.direct || string(c.p.Body) != body || c.p.Kind != broker.KindChat {
				t.Fatalf("the other publisher's message: %+v", c.p)
			}
			break
		}
		if !ids[c.p.JobID] {
			t.Fatalf("call for an unknown job: %+v", c.p)
		}
		seen[c.p.JobID]++
		switch n := seen[c.p.JobID]; {
		case n == 1 && !c.direct:
			t.Errorf("job %s: the callback got it from NATS first, not from the submit", c.p.JobID)
		case n == 2 && c.direct:
			t.Errorf("job %s: the submit called twice", c.p.JobID)
		case n > 2:
			t.Fatalf("job %s woke the callback %d times", c.p.JobID, n)
		}
		if string(c.p.Body) != body {
			t.Errorf("job %s: body %q", c.p.JobID, c.p.Body)
		}
	}
	if len(seen) != jobs {
		t.Fatalf("%d of %d jobs woke the callback", len(seen), jobs)
	}
	for id, n := range seen {
		if n != 2 {
			t.Errorf("job %s woke the callback %d times, want 2 (from the submit, from NATS)", id, n)
		}
	}
}
