package worker

import (
	"log/slog"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// testWorker is a worker of b's store in front of a fake Ollama of its own (returned
// too), its log discarded; cfg sets the rest. It is not started.
func testWorker(t *testing.T, b *brokertest.Bundle, cfg Config) (*Worker, *ollamatest.Server) {
	t.Helper()
	fake := ollamatest.New(t)
	target, err := ollama.NewClient(ollama.ClientConfig{BaseURL: fake.URL, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store, cfg.Target, cfg.Logger = b.Store, target, slog.New(slog.DiscardHandler)
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w, fake
}
