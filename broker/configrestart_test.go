package broker_test

import (
	"errors"
	"log/slog"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// An operator lowers FOREMAN_MAX_QUEUE below the queue's depth and restarts foreman (the
// embedded server): every job stays queued, submits are refused until fewer wait, and
// the start says so, with the numbers, rather than leaving the 503s to look like a fault.
func TestMaxQueueLoweredBelowTheDepthKeepsTheJobsAndSaysSo(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.Exclusive, c.MaxQueue = true, 10 }))
	submit := func() error {
		_, err := b.Store.Submit(ctxT(t), &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
		return err
	}
	for range 5 {
		if err := submit(); err != nil {
			t.Fatal(err)
		}
	}
	var logs lockedLog
	b.RestartWith(t, brokertest.WithStore(func(c *broker.Config) {
		c.MaxQueue, c.Logger = 2, slog.New(slog.NewTextHandler(&logs, nil))
	}))
	if n, err := b.Store.QueueLen(ctxT(t)); err != nil || n != 5 {
		t.Fatalf("queue after the restart: %d jobs, %v; want the 5 kept", n, err)
	}
	if err := submit(); !errors.Is(err, broker.ErrQueueFull) {
		t.Errorf("submit past the lowered bound: %v, want %v", err, broker.ErrQueueFull)
	}
	if out := logs.String(); !strings.Contains(out, "FOREMAN_MAX_QUEUE") || !strings.Contains(out, "jobs=5 max_queue=2") {
		t.Errorf("no word of the queue above its bound; log:\n%s", out)
	}
}
