package broker_test

import (
	"context"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A foreman whose presence lapsed while the store took no writes (a NATS cluster that
// lost its quorum for longer than PresenceTTL) runs on, and takes sync calls again as
// soon as the store is back, before its next heartbeat lands (up to 10 s after). The
// other foremen canceled every one of those fresh jobs, "caller gone", and each caller
// got a 503 within milliseconds (seen in a black-box run for 8 s after the quorum came
// back). The gateway that published a job's queue message less than a PresenceTTL ago
// was alive then: its caller is not gone, whatever the presence bucket says.
func TestAFreshSyncJobOfALapsedGatewayIsNotAbandoned(t *testing.T) {
	t.Parallel()
	// The presence bucket's TTL is the longest asked for: 1 s until other opens.
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.PresenceTTL = time.Second }))
	ctx := ctxT(t)
	// The gateway's presence lapses at once (it never heartbeats after its start).
	gw, err := broker.Open(ctx, broker.Config{Conn: b.Conn, PresenceTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the gateway's presence lapsed", func() bool {
		return !gw.Present(ctx, gw.BootID())
	})
	other, err := broker.Open(ctx, broker.Config{Conn: b.Conn, PresenceTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	j := submitSync(t, gw, "tiny-a", gw.BootID())

	if n, err := other.CancelAbandoned(ctx); err != nil || n != 0 {
		t.Fatalf("CancelAbandoned = %d, %v; want 0: the job's gateway published it a moment ago", n, err)
	}
	d, err := other.Next(ctx, token(t, "tiny-a"))
	if err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("next: %+v, %v", d, err)
	}
	if other.CallerGoneAt(ctx, j, d.GatewaySent()) {
		t.Fatal("the delivery of a job its gateway published a moment ago finds its caller gone")
	}
	// Without a stamp of the gateway's (a message another process published again) the
	// presence bucket alone says.
	if !other.CallerGoneAt(ctx, j, time.Time{}) {
		t.Fatal("a lapsed gateway's caller taken for present without a fresh publish of its own")
	}
	// A gateway that stopped in order (it withdrew its presence) has no caller left,
	// however fresh its job.
	stopped, err := broker.Open(ctx, broker.Config{Conn: b.Conn, PresenceTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	fresh := submitSync(t, stopped, "tiny-a", stopped.BootID())
	withdrawn, withdraw := context.WithCancel(ctx)
	withdraw()
	_ = stopped.Announce(withdrawn)
	if !other.CallerGoneAt(ctx, fresh, time.Now()) {
		t.Fatal("the caller of a gateway that withdrew its presence taken for present")
	}
}
