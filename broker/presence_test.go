package broker_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A presence heartbeat that failed while NATS could not be reached is tried again soon,
// not at the next heartbeat (10 s on): once NATS is back, the foreman is present again
// (its presence may have lapsed meanwhile, and its sync callers been taken for gone).
// Here the next heartbeat never comes; the retry alone brings the presence back.
func TestPresenceHeartbeatRetriedSoonAfterAFailure(t *testing.T) {
	t.Parallel()
	var logs lockedLog
	o := brokertest.NewOutage(t, func(c *broker.Config) {
		c.BootID = broker.NewID()
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	ctx := ctxT(t)
	ticks := make(chan time.Time)
	o.Store.SetPresenceTicks(ticks)
	actx, stop := context.WithCancel(ctx)
	announced := make(chan error, 1)
	go func() { announced <- o.Store.Announce(actx) }()
	defer func() {
		stop()
		<-announced
	}()
	kv, err := brokertest.JetStream(t, o.Conn).KeyValue(ctx, broker.PresenceBucket)
	if err != nil {
		t.Fatal(err)
	}
	key := broker.PresenceKey(o.Store.Config().BootID)
	before, err := kv.Get(ctx, key)
	if err != nil {
		t.Fatalf("presence after Open: %v", err)
	}

	o.Cut(t)
	ticks <- time.Now() // a heartbeat during the outage: it fails
	eventually(t, 10*time.Second, "the failed heartbeat's warning", func() bool {
		return strings.Contains(logs.String(), `msg="presence heartbeat"`)
	})
	o.Heal(t)
	eventually(t, 20*time.Second, "a heartbeat stored after the outage", func() bool {
		e, err := kv.Get(ctx, key)
		return err == nil && e.Revision() > before.Revision()
	})
	eventually(t, 10*time.Second, "the heartbeat said to work again", func() bool {
		return strings.Contains(logs.String(), `msg="presence heartbeat: works again"`)
	})
}
