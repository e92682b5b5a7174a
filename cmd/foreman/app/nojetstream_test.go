package app

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// FOREMAN_NATS_URL at a nats-server started without JetStream: the start fails in seconds
// naming the setting and how to turn JetStream on, instead of waiting for a cluster
// "electing" until Ctrl-C.
func TestNATSWithoutJetStream(t *testing.T) {
	t.Parallel()
	ns := natsServer(t, func(o *server.Options) { o.JetStream = false })
	// Only bounds a start that would wait forever: it must not be reached.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a, err := Start(ctx, Config{Addr: "127.0.0.1:0", NATSURL: ns.ClientURL(), NATSReplicas: 1}, slog.New(slog.DiscardHandler))
	if err == nil {
		_ = a.Shutdown(ctx)
		t.Fatal("started on a server without JetStream")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("start waited out its context: %v", err)
	}
	for _, want := range []string{"FOREMAN_NATS_URL=", "without JetStream", "-js", "jetstream {}"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}
