package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// unavailableStore stands in front of a real store and fails the dispatcher's start-up
// calls as a NATS cluster electing a leader does (or a server too loaded to answer in
// time), a set number of times each, before it lets them through.
type unavailableStore struct {
	Store
	consumeFails, pendingFails atomic.Int32 // failures left
	failed                     chan error   // each failure, for the test to follow
}

func newUnavailableStore(st Store, consumeFails, pendingFails int32) *unavailableStore {
	s := &unavailableStore{Store: st, failed: make(chan error, 100)}
	s.consumeFails.Store(consumeFails)
	s.pendingFails.Store(pendingFails)
	return s
}

func (s *unavailableStore) ConsumeChanges(ctx context.Context, cfg broker.ChangeConsumerConfig) (*broker.ChangeConsumer, error) {
	if s.consumeFails.Add(-1) >= 0 {
		// What a CreateOrUpdateConsumer nobody answered in time returns.
		return nil, s.fail(fmt.Errorf("consumer %s: %w", cfg.Durable, context.DeadlineExceeded))
	}
	return s.Store.ConsumeChanges(ctx, cfg)
}

func (s *unavailableStore) ClaimPendingDeliveries(ctx context.Context, skip func(string, uint64) bool) ([]broker.PendingDelivery, []broker.PendingRef, error) {
	if s.pendingFails.Add(-1) >= 0 {
		return nil, nil, s.fail(fmt.Errorf("broker: list pending deliveries: %w", nats.ErrNoResponders))
	}
	return s.Store.ClaimPendingDeliveries(ctx, skip)
}

func (s *unavailableStore) fail(err error) error {
	select {
	case s.failed <- err:
	default:
	}
	return err
}

// logBuffer collects a logger's text output for a test to read.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// count is the number of lines that contain every one of parts.
func (l *logBuffer) count(parts ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for line := range strings.Lines(l.buf.String()) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// A dispatcher whose store cannot answer at start (the consumer's creation timing out,
// the pending deliveries' read finding no responders) waits for it, warning once per
// failed try, and then delivers; it does not end, which would end foreman.
func TestStartWaitsForAnUnavailableStore(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	var logs logBuffer
	st := newUnavailableStore(b.Store, 2, 1)
	cfg := fastConfig(b.Store)
	cfg.Store, cfg.Logger = st, slog.New(slog.NewTextHandler(&logs, nil))
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL + "/hook"}})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case err := <-done:
		t.Fatalf("Run ended at start: %v", err)
	case h := <-rcv.hits:
		if h.job == nil || h.job.ID != j.ID || h.job.State != broker.StateQueued {
			t.Fatalf("got event %s, want the queued event of job %s", h.body, j.ID)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no webhook arrived")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
	// At least the injected failures (a loaded machine may add a real timeout).
	if n := logs.count("level=WARN", "waiting for the NATS cluster: webhook consumer", "context deadline exceeded"); n < 2 {
		t.Errorf("%d warnings of the consumer's failed tries, want 2:\n%s", n, logs.buf.String())
	}
	if n := logs.count("level=WARN", "waiting for the NATS cluster: pending webhook deliveries", "no responders"); n < 1 {
		t.Errorf("%d warnings of the pending deliveries' failed tries, want 1:\n%s", n, logs.buf.String())
	}
}

// A dispatcher stopped while it waits for its store at start returns nil, as after any
// other stop.
func TestStopWhileWaitingForTheStoreAtStart(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	st := newUnavailableStore(b.Store, 1_000_000, 0)
	cfg := fastConfig(b.Store)
	cfg.Store = st
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case <-st.failed:
	case err := <-done:
		t.Fatalf("Run ended before its store failed: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Run ended after a failure that says the cluster cannot answer for now: %v", err)
	case <-st.failed: // tried again: Run waits
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run stopped while waiting for its store: %v, want nil", err)
	}
}

// A consumer that cannot be made is no cluster to wait for: another program's consumer
// under the dispatcher's name, with a deliver policy that cannot be updated, ends Run
// with the server's answer.
func TestStartFailsOnAConsumerThatCannotBeMade(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	stream, err := b.JetStream(t).Stream(ctxT(t), "KV_"+broker.JobsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.CreateConsumer(ctxT(t), jetstream.ConsumerConfig{
		Durable: "webhooks", DeliverPolicy: jetstream.DeliverNewPolicy, AckPolicy: jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	d, err := New(fastConfig(b.Store))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run went on with a consumer it cannot make")
	}
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || !strings.Contains(err.Error(), "deliver policy can not be updated") {
		t.Fatalf("Run: %v, want the server's refusal to update the consumer", err)
	}
}
