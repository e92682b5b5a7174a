package app_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A stop (Ctrl-C, SIGTERM) while foreman starts on a NATS that stopped answering (a
// frozen node) ends the start at once: the start's failure shut down what it had begun
// without a deadline, and the drain of the connection waited for the NATS's answer until
// the connection's pings found it stale, 15 s after the Ctrl-C.
func TestStopWhileStartingOnAFrozenNATSEndsAtOnce(t *testing.T) {
	t.Parallel()
	mac := ollamatest.New(t)
	url, asked := brokertest.SilentNATS(t, "PUB ", "HPUB ")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		a, err := app.Start(ctx, app.Config{Addr: "127.0.0.1:0", OllamaURL: mac.URL, NATSURL: url, NATSReplicas: 1, TargetName: "mac-a"},
			slog.New(slog.DiscardHandler))
		if err == nil {
			_ = a.Shutdown(context.Background())
		}
		done <- err
	}()
	select {
	case <-asked:
	case <-time.After(10 * time.Second):
		t.Fatal("foreman never asked the NATS anything")
	}
	cancel()
	// Far less than the 15 s of unanswered pings, far more than an ended start takes.
	select {
	case err := <-done:
		if err == nil {
			t.Error("Start on a NATS that answers nothing succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a start stopped on a frozen NATS did not end with its stop")
	}
}
