package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// Two foremen, each with its own target, share a 3-node NATS cluster; a node dies while
// jobs run: the one foreman A is connected to.
func TestClusterNodeKilled(t *testing.T) {
	clusterRun(t, func(c *brokertest.Cluster, a *app.App) int {
		name := a.Conn().ConnectedServerName()
		for i, ns := range c.Nodes {
			if ns.Name() == name {
				return i
			}
		}
		t.Fatalf("foreman is connected to %q, no node of the cluster", name)
		return -1
	})
}

// As above, but the node that dies leads the queue stream.
func TestClusterQueueLeaderKilled(t *testing.T) {
	clusterRun(t, func(c *brokertest.Cluster, _ *app.App) int {
		return c.StreamLeader(broker.QueueStream)
	})
}

// clusterRun submits 12 jobs through two foremen on a 3-node cluster, kills the node
// victim names once jobs are running, and checks that every job ends done exactly once
// and reached a target exactly once. The wait is shorter than FOREMAN_ACK_WAIT (60s),
// so a job handed out again after a lost write or ack fails the test too.
func clusterRun(t *testing.T, victim func(*brokertest.Cluster, *app.App) int) {
	if testing.Short() {
		t.Skip("3-node NATS cluster with two foremen; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	// Jobs of about half a second each: the kill comes while most are still to run.
	fakes := []*ollamatest.Server{
		ollamatest.New(t, ollamatest.WithTokenDelay(10*time.Millisecond), ollamatest.WithTokens(50)),
		ollamatest.New(t, ollamatest.WithTokenDelay(10*time.Millisecond), ollamatest.WithTokens(50)),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	var foremen []*app.App
	for i, fake := range fakes {
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("foreman", i+1)
		a, err := app.Start(ctx, app.Config{Addr: "127.0.0.1:0", NATSURL: c.URLs(), OllamaURL: fake.URL}, log)
		if err != nil {
			t.Fatalf("start foreman %d: %v", i+1, err)
		}
		t.Cleanup(func() {
			sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer scancel()
			_ = a.Shutdown(sctx)
		})
		foremen = append(foremen, a)
	}
	base := func(i int) string { return "http://" + foremen[i%2].Addr() }

	const n = 12
	ids := make([]string, n)
	tags := make([]string, n)
	for i := range n {
		tags[i] = fmt.Sprintf("cluster-job-%02d", i)
		ids[i] = submitAsync(t, ctx, base(i), []string{"tiny-a", "tiny-b"}[i%2], tags[i])
	}
	// Kill once two jobs have reached a target (either foreman's), with most still to come.
	started := func() int {
		n := 0
		for _, fake := range fakes {
			for _, call := range fake.Calls() {
				if call.Model != "" {
					n++
				}
			}
		}
		return n
	}
	for started() < 2 {
		select {
		case <-ctx.Done():
			t.Fatalf("%d jobs started", started())
		case <-time.After(10 * time.Millisecond): // polling the fakes with a deadline
		}
	}
	c.Kill(victim(c, foremen[0]))

	for i, id := range ids {
		// Ask the foreman on the other side too: either may be the one reconnecting.
		if st := waitTerminal(t, ctx, base(i+1), id); st != string(broker.StateDone) {
			t.Errorf("job %s (%s) ended %q, want done", id, tags[i], st)
		}
	}
	runs := map[string]int{}
	for _, fake := range fakes {
		for _, call := range fake.Calls() {
			for _, tag := range tags {
				if call.Model != "" && bytes.Contains(call.Body, []byte(tag)) {
					runs[tag]++
				}
			}
		}
	}
	for _, tag := range tags {
		if runs[tag] != 1 {
			t.Errorf("job %s reached a target %d times, want once", tag, runs[tag])
		}
	}
	// Exactly one terminal record each: the record's attempt says how many starts it saw.
	for i, id := range ids {
		j, _, err := foremen[i%2].Store().Get(ctx, id)
		if err != nil {
			t.Errorf("read job %s: %v", id, err)
			continue
		}
		if j.State != broker.StateDone || j.Attempt != 1 {
			t.Errorf("job %s: state %s attempt %d, want done attempt 1", id, j.State, j.Attempt)
		}
	}
}
