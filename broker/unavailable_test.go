package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// While NATS is gone (the connection reconnecting to a server that does not answer), the
// reads behind GET /queue and GET /jobs give up with ErrUnavailable within the retry
// window, as every other read does: the gateway's 503 with Retry-After, not a deadline
// passed on as it came.
func TestQueueViewAndListUnavailable(t *testing.T) {
	t.Parallel()
	// Short, as each read below waits it out; long enough for the submit before the
	// outage on a loaded machine.
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.RetryWindow = 2 * time.Second }))
	j := submit(t, b.Store, "tiny-a", `{"model":"tiny-a","messages":[]}`)
	back := b.Store.Backlog()
	if msgs, err := back.Refresh(ctxT(t), 0); err != nil || len(msgs) != 1 {
		t.Fatalf("backlog before: %v %v", msgs, err)
	}
	b.Server.Shutdown() // the connection stays, reconnecting
	// A request's context has no deadline of its own; this one only bounds a store
	// that would wait for its answer forever.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // six reads of one window each
	defer cancel()

	if _, err := back.Refresh(ctx, 0); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("backlog refresh: %v, want ErrUnavailable", err)
	}
	if _, err := b.Store.Backlog().Refresh(ctx, 0); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("first backlog refresh: %v, want ErrUnavailable", err)
	}
	for _, opt := range []broker.ListOptions{{}, {States: []broker.State{broker.StateDone}}, {Cursor: j.ID}} {
		if _, _, err := b.Store.List(ctx, opt); !errors.Is(err, broker.ErrUnavailable) {
			t.Errorf("list %+v: %v, want ErrUnavailable", opt, err)
		}
	}
	if _, _, err := b.Store.Get(ctx, j.ID); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("get (as it always was): %v, want ErrUnavailable", err)
	}
}
