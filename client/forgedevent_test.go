package client_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// TestForgedStateEvents: only JetStream's republishes of job records are state events.
// A NATS client can make foreman's submit service reply on a job's state subject (the
// server passes a client's reply subject through a service import under another name),
// and anything without the republish headers is no record either: Watch ignores both.
func TestForgedStateEvents(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	nc := natsConn(t, f)
	ctx := testCtx(t)
	c := newClient(t, f.URL, client.WithNATS(nc), client.WithPollInterval(never))
	events, err := c.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}

	// A second subscriber on the same connection: once it has both forged messages, the
	// watch's subscription has them too, ahead of anything published later.
	const victim = "01JGJ4Q2R0000000000000000V"
	seen := make(chan *nats.Msg, 2)
	sub, err := nc.Subscribe(broker.StateSubject(victim), func(m *nats.Msg) { seen <- m })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// foreman's answer to a bad submit, {"error": "..."}, lands on the victim's subject.
	attacker := natsConn(t, f)
	if err := attacker.PublishRequest(broker.SubmitSubject, broker.StateSubject(victim), []byte(`{"model":"\u001b[2J attacker text"}`)); err != nil {
		t.Fatal(err)
	}
	// A well-formed record published as a plain message, not republished by JetStream.
	record := `{"job_id":"` + victim + `","state":"failed","model":"m","attempt":1,"at":"2025-01-02T03:04:05Z","error":"forged"}`
	if err := f.Conn.Publish(broker.StateSubject(victim), []byte(record)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case <-seen:
		case <-ctx.Done():
			t.Fatal("the forged messages never arrived")
		}
	}

	real, err := newClient(t, f.URL, client.WithPollingOnly()).SubmitAsync(ctx, chatJob("tiny-a", "real"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-events:
		if e.JobID != real || e.State != client.StateQueued {
			t.Fatalf("first event %+v; want the real job %s queued", e, real)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no event of the real job")
	}
}
