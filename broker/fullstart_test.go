package broker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// A foreman started on its own (embedded) server whose storage limit leaves no room, as
// after a restart on a full disk (the server fixes its limit at start from the space then
// free, so room made later is never seen), fails its start with the cause, instead of
// waiting for "the NATS cluster" that is not there: it served nothing, for ever, and a
// supervisor restarting it, which reads the free space again, never got the chance.
func TestOpenOnAFullEmbeddedStoreFailsWithTheCause(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t,
		brokertest.WithNATS(func(c *natsd.Config) { c.MaxStore = 8 << 20 }),
		brokertest.WithStore(func(c *broker.Config) { c.Exclusive = true }))
	defer brokertest.FillStore(t, b.Conn)()

	// Bounded only so a regression ends; the start must give up well before.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := broker.Open(ctx, broker.Config{Conn: b.Conn, Exclusive: true, BootID: broker.NewID()})
	if err == nil {
		t.Fatalf("open on a full store: no error (store %v), want ErrStorageFull", st)
	}
	if ctx.Err() != nil {
		t.Fatalf("open on a full store waited until its context ended: %v", err)
	}
	if !errors.Is(err, broker.ErrStorageFull) || !strings.Contains(err.Error(), "FOREMAN_DATA_DIR") {
		t.Fatalf("open on a full store: %v, want ErrStorageFull naming FOREMAN_DATA_DIR", err)
	}
}
