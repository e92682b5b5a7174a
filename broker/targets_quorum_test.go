package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A cluster that lost its quorum (two of three nodes down) takes no writes, but the node
// left may still answer reads: every foreman's entry in the targets bucket ages past its
// lifetime, the reader's own too, and the other Macs looked dead. A call for a model only
// another Mac has got Ollama's 404 "model not found" (on which a client pulls the model)
// for the whole outage, instead of the 503 of model lists that cannot be read (seen in a
// black-box run, 16 s into a quorum loss). While the reader's own entry lapsed too, the
// lapse of the others' says nothing: Targets is an error.
func TestClusterTargetsOfAStoreThatTakesNoWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	const life = 500 * time.Millisecond
	adjust := func(cfg *broker.Config) { cfg.TargetTTL = life }
	// The stores on the node that will stay: the bucket's leader, which answers its reads.
	first := c.Open(t, adjust)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := first.PublishTarget(ctx, broker.Target{Name: "mac-a", Reachable: true, Models: []string{"tiny-a:latest"}}); err != nil {
		t.Fatal(err)
	}
	left := c.StreamLeader("KV_" + broker.TargetsBucket)
	own := c.OpenOn(t, left, adjust)
	other := c.OpenOn(t, left, adjust)
	if err := own.PublishTarget(ctx, broker.Target{Name: "mac-own", Reachable: true, Models: []string{"tiny-a:latest"}}); err != nil {
		t.Fatal(err)
	}
	if err := other.PublishTarget(ctx, broker.Target{Name: "mac-b", Reachable: true, Models: []string{"tiny-b:latest"}}); err != nil {
		t.Fatal(err)
	}
	for i := range c.Nodes {
		if i != left {
			c.Kill(i)
		}
	}
	// Until the entries lapse the list is whole; then it must not be a list without mac-b.
	var got []broker.Target
	var err error
	eventually(t, time.Minute, "the entries past their lifetime", func() bool {
		got, err = own.Targets(ctx)
		if err != nil {
			return true
		}
		for _, tg := range got {
			if tg.Name == "mac-b" {
				return false
			}
		}
		return true
	})
	if err == nil {
		t.Fatalf("targets %+v read from a store that takes no writes, mac-b left out as dead", got)
	}
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
}

// A frozen node (SIGSTOP, a paused VM) keeps its routes open until they are pinged out
// (15 s with the shipped cluster example) and answers none of the direct gets it is
// sent. A read of the targets bucket waited on such a get for its caller's whole time:
// a submit's 10 s ran out, and the call got a 503 "model lists cannot be read" or a 504
// (a black-box run froze a node). Each get is a try of its own; unanswered, the
// bucket's leader is asked.
func TestClusterTargetsPastAFrozenReplica(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	st := c.Open(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	publishMacB(t, ctx, st)
	frozen := c.Connect(t)
	standIn := "frozen.replica.>"
	sub, err := frozen.Subscribe(standIn, func(*nats.Msg) {}) // takes the request, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := frozen.Flush(); err != nil {
		t.Fatal(err)
	}
	c.MapSubject(t, "$JS.API.DIRECT.GET.KV_"+broker.TargetsBucket+".>", standIn, 50)
	readsMacB(t, ctx, st, 6, 10*time.Second) // each read within a submit's time
}
