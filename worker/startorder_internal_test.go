package worker

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// At a start with the job TTL lowered (ADR-0101), a job that waited longer than the new
// TTL ends failed (expired) by the first expiry look, without starting: the first pick
// comes after that look has ended. The look once ran beside the loop, and a pick that
// won the race tried the job first (TestJobTTLLoweredAtARestartEndsTheOlderJobs saw it
// 1 in 12 under load). Here a first look made beside the loop is held until the loop has
// fetched the job, so that the pick wins that race every time; a look made on Run's own
// goroutine holds Run, which can pick nothing meanwhile, and is not held.
func TestTheFirstExpiryLookEndsBeforeTheFirstPick(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const lowered = time.Second
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) {
		c.Exclusive, c.AckWait, c.JobTTL = true, 10*time.Minute, time.Hour
	}))
	queued := time.Now()
	j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	if _, err := b.Store.Submit(ctx, j, []byte(chatBodyOf("tiny-a"))); err != nil {
		t.Fatal(err)
	}
	until(t, 10*time.Second, "the job older than the lowered TTL", func() bool {
		return time.Since(queued) > lowered+lowered/4
	})
	b.RestartWith(t, brokertest.WithStore(func(c *broker.Config) { c.JobTTL = lowered }))
	// Watched before the worker starts: an ended record lives only the lowered TTL.
	watch, err := b.Store.WatchJob(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Stop()

	var looks atomic.Int32
	var looked, pickedFirst atomic.Bool
	fetched := make(chan struct{})
	var fetchedOnce sync.Once
	w, fake := testWorker(t, b, Config{
		beforeExpiry: func() {
			if looks.Add(1) > 1 || onRunsGoroutine() {
				return
			}
			select {
			case <-fetched:
			case <-ctx.Done():
			}
		},
		afterExpiry: func([]string) { looked.Store(true) },
		Trace: func(id, stage string) {
			if id != j.ID || stage != StageFetched {
				return
			}
			if !looked.Load() {
				pickedFirst.Store(true)
			}
			fetchedOnce.Do(func() { close(fetched) })
		},
	})
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx) }()
	defer func() {
		if err := w.Stop(ctx); err != nil {
			t.Error(err)
		}
		if err := <-ran; err != nil {
			t.Error(err)
		}
	}()

	got, _, err := b.Store.Get(ctx, j.ID)
	for ; err == nil && !got.State.Terminal(); got, err = watch.Next(ctx) {
	}
	if err != nil {
		t.Fatalf("the job never ended: %v", err)
	}
	if pickedFirst.Load() {
		t.Error("the first pick fetched the job before the first expiry look had ended")
	}
	if want := broker.ExpiredError(lowered, 0); got.State != broker.StateFailed || got.Error != want {
		t.Errorf("job %s %q, want failed %q", got.State, got.Error, want)
	}
	for _, c := range fake.Calls() {
		if c.Model != "" {
			t.Errorf("the target was called for a job past the job TTL: %s %s", c.Method, c.Path)
		}
	}
}

// onRunsGoroutine reports whether the caller runs on Run's own goroutine (not on one it
// started: their frames are Run.funcN, and "created by" names no call).
func onRunsGoroutine() bool {
	buf := make([]byte, 64<<10)
	return strings.Contains(string(buf[:runtime.Stack(buf, false)]), ".(*Worker).Run(")
}
