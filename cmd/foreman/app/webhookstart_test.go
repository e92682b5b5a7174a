package app_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// slowConsumerStore is the dispatcher's store, whose consumer creation times out a set
// number of times first, as on a NATS cluster electing a leader or a loaded machine.
type slowConsumerStore struct {
	webhook.Store
	fails atomic.Int32 // failures left
}

func (s *slowConsumerStore) ConsumeChanges(ctx context.Context, cfg broker.ChangeConsumerConfig) (*broker.ChangeConsumer, error) {
	if s.fails.Add(-1) >= 0 {
		return nil, fmt.Errorf("consumer %s: %w", cfg.Durable, context.DeadlineExceeded)
	}
	return s.Store.ConsumeChanges(ctx, cfg)
}

// A webhook dispatcher whose consumer cannot be made at first does not end foreman: it
// waits for JetStream, and then delivers.
func TestWebhooksWaitForJetStreamAtStart(t *testing.T) {
	t.Parallel()
	mac := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	hits := make(chan struct{}, 10)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		hits <- struct{}{}
	}))
	t.Cleanup(rcv.Close)

	cfg := app.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), OllamaURL: mac.URL, TargetName: "studio", PollInterval: 200 * time.Millisecond}
	allowLoopbackWebhooks(&cfg)
	cfg.Components.Webhooks = func(c *webhook.Config) {
		s := &slowConsumerStore{Store: c.Store}
		s.fails.Store(2)
		c.Store = s
	}
	a, err := app.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopForeman(t, a) })

	code, b := call(t, a, http.MethodPost, "/jobs", `{"model":"alpha","messages":[{"role":"user","content":"hi"}],`+
		`"state_webhook_url":"`+rcv.URL+`/hook","webhook_events":["queued"]}`)
	if code != http.StatusAccepted {
		t.Fatalf("/jobs: %d %s", code, b)
	}
	select {
	case err := <-a.Failed():
		t.Fatalf("foreman ended: %v", err)
	case <-hits:
	case <-time.After(30 * time.Second):
		t.Fatal("no webhook arrived")
	}
	select {
	case err := <-a.Failed():
		t.Fatalf("foreman ended: %v", err)
	default:
	}
}
