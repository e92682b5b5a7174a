package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// refusingStore is the webhook dispatcher's store, whose change consumer is refused for
// good once fail is closed: the dispatcher fails, and foreman with it.
type refusingStore struct {
	webhook.Store
	fail <-chan struct{}
}

func (s refusingStore) ConsumeChanges(ctx context.Context, cfg broker.ChangeConsumerConfig) (*broker.ChangeConsumer, error) {
	select {
	case <-s.fail:
		return nil, errors.New("consumer refused")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// addrLog is a log handler that hands on the address of "foreman is serving".
type addrLog struct {
	slog.Handler
	addr chan string
}

func (h addrLog) Enabled(context.Context, slog.Level) bool { return true }

func (h addrLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "foreman is serving" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "addr" {
				h.addr <- a.Value.String()
			}
			return true
		})
	}
	return nil
}

// A shutdown that a failed component began (not the operator) is cut short by the
// operator's first stop: it waits, like any, for the running job to finish, up to
// FOREMAN_SHUTDOWN_TIMEOUT, and the Ctrl-C of an operator who saw "a component failed;
// shutting down" did nothing; only a second one cut it.
func TestFirstStopCutsAShutdownAFailureBegan(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	release := fake.Hold("tiny-a")
	defer release()
	cfg, err := parseConfig(t, nil, map[string]string{
		"FOREMAN_ADDR": "127.0.0.1:0", "FOREMAN_DATA_DIR": t.TempDir(), "FOREMAN_OLLAMA_URL": fake.URL,
		"FOREMAN_SHUTDOWN_TIMEOUT": "10m",
	})
	if err != nil {
		t.Fatal(err)
	}
	fail := make(chan struct{})
	cfg.Components.Webhooks = func(c *webhook.Config) { c.Store = refusingStore{Store: c.Store, fail: fail} }
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	addr, done := serveInProcess(t, ctx, cfg, make(chan struct{}))
	resp, err := http.Post("http://"+addr+"/jobs", "application/json",
		strings.NewReader(`{"model":"tiny-a","messages":[{"role":"user","content":"long"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	if err := fake.WaitStarted(wctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	close(fail) // the dispatcher fails: the shutdown begins, and waits for the held job
	waitNotServing(t, wctx, addr, done)
	stop() // the operator's first Ctrl-C
	select {
	case err := <-done:
		if err == nil {
			t.Error("serve ended without the component's failure")
		}
	case <-time.After(20 * time.Second): // far below the 10 minutes the shutdown would wait
		t.Fatal("the operator's stop did not cut short the shutdown a failure began")
	}
}

// serveInProcess runs serve with cfg until ctx ends (stopNow: a second stop) and returns
// the address it serves on and serve's end.
func serveInProcess(t *testing.T, ctx context.Context, cfg *serveConfig, stopNow chan struct{}) (string, <-chan error) {
	t.Helper()
	log := addrLog{Handler: slog.DiscardHandler, addr: make(chan string, 1)}
	done := make(chan error, 1)
	go func() { done <- serve(ctx, *cfg, slog.New(log), stopNow) }()
	select {
	case addr := <-log.addr:
		return addr, done
	case err := <-done:
		t.Fatalf("serve ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("foreman did not serve")
	}
	return "", nil
}

// waitNotServing waits until foreman at addr, shutting down, has closed its HTTP
// listener, while its shutdown waits for a running job: serve must not end meanwhile.
func waitNotServing(t *testing.T, ctx context.Context, addr string, done <-chan error) {
	t.Helper()
	for {
		r, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return
		}
		r.Body.Close()
		select {
		case <-ctx.Done():
			t.Fatal("foreman still serving after the shutdown began")
		case err := <-done:
			t.Fatalf("serve ended while its job ran: %v", err)
		case <-time.After(20 * time.Millisecond): // polling with a deadline
		}
	}
}
