package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// A stop while the NATS server cannot be reached (a shared cluster gone away) ends the
// change consumer at once: a drained iterator would make Next wait out its flush's 10 s,
// and Release its whole budget, outside the shutdown's deadline.
func TestChangesStopAtOnceWhileDisconnected(t *testing.T) {
	t.Parallel()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(srv.Shutdown)
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	reconnecting := make(chan struct{}, 1)
	nc, err := nats.Connect(srv.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.DisconnectErrHandler(func(*nats.Conn, error) {
			select {
			case reconnecting <- struct{}{}:
			default:
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx := ctxT(t)
	st, err := broker.Open(ctx, broker.Config{Conn: nc})
	if err != nil {
		t.Fatal(err)
	}
	c, err := st.ConsumeChanges(ctx, broker.ChangeConsumerConfig{Durable: "changes", AckWait: 10 * time.Second, MaxAckPending: 16})
	if err != nil {
		t.Fatal(err)
	}
	next := make(chan error, 1)
	go func() {
		_, err := c.Next()
		next <- err
	}()
	srv.Shutdown()
	select {
	case <-reconnecting:
	case <-ctx.Done():
		t.Fatal("the connection never noticed the server's end")
	}
	stopped := time.Now()
	c.Stop()
	select {
	case err := <-next:
		if err != broker.ErrChangesStopped {
			t.Errorf("Next after Stop: %v, want ErrChangesStopped", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Next still waits 5 s after Stop while disconnected (a drain's flush)")
	}
	rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Release(rctx); err == nil {
		t.Error("Release while disconnected says it handed the consumer over")
	}
	if waited := time.Since(stopped); waited > 5*time.Second {
		t.Errorf("Stop and Release took %v while disconnected, want them at once", waited)
	}
}
