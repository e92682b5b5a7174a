package main

import (
	"context"
	"log/slog"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A stop asked for (SIGTERM, Ctrl-C) while foreman still starts (waiting for its NATS
// cluster) is the operator's, not a failure: serve returns no error, so the exit status
// is 0 and systemd does not mark the unit failed. Before, it exited 1 with "context
// canceled".
func TestStopWhileStartingIsNoFailure(t *testing.T) {
	t.Parallel()
	// A NATS URL nothing answers: the start waits for it until the stop.
	dead := ollamatest.ClosedAddr(t)
	cfg, err := parseConfig(t, nil, map[string]string{
		"FOREMAN_ADDR": "127.0.0.1:0", "FOREMAN_DATA_DIR": t.TempDir(),
		"FOREMAN_NATS_URL": "nats://" + dead, "FOREMAN_OLLAMA_URL": "http://127.0.0.1:1",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the signal came before the start could end
	if err := serve(ctx, *cfg, slog.New(slog.DiscardHandler), nil); err != nil {
		t.Errorf("serve stopped while starting: %v, want no error", err)
	}
}
