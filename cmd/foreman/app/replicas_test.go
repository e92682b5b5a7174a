package app

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// FOREMAN_NATS_URL's default of 3 replicas on one NATS server that is no cluster: the
// start fails naming FOREMAN_NATS_REPLICAS and the value a single server needs.
func TestReplicasOnASingleServer(t *testing.T) {
	t.Parallel()
	ns := natsServer(t, func(*server.Options) {})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, err := Start(ctx, Config{Addr: "127.0.0.1:0", NATSURL: ns.ClientURL()}, slog.New(slog.DiscardHandler))
	if err == nil {
		_ = a.Shutdown(ctx)
		t.Fatal("started with 3 replicas on a single server")
	}
	for _, want := range []string{"FOREMAN_NATS_REPLICAS=3:", "set FOREMAN_NATS_REPLICAS=1", "err_code=10074"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if err := startWith(t, Config{NATSURL: ns.ClientURL()}); err != nil {
		t.Errorf("1 replica on the same server: %v", err)
	}
}
