package worker_test

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// heldLine is a log handler that holds the goroutine logging a line containing msg until
// release, and closes logged as it does.
type heldLine struct {
	msg     string
	logged  chan struct{}
	release chan struct{}
	once    sync.Once
}

func (h *heldLine) Enabled(context.Context, slog.Level) bool { return true }
func (h *heldLine) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.msg) {
		h.once.Do(func() { close(h.logged) })
		<-h.release
	}
	return nil
}
func (h *heldLine) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *heldLine) WithGroup(string) slog.Handler      { return h }

// A delivery-limit advisory whose job's end the store refuses goes on in the background
// only while Run still waits for its background work: an advisory handled as the worker
// stopped (here its handler is held between its look at the stop and its background
// start, until Run has returned) starts nothing. It counted its retry into the WaitGroup
// Run had waited on and returned from: a misuse of it (a Wait woken as the count rose
// again panics), which the race detector reports.
func TestDeliveryLimitRetryNotStartedPastRun(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	held := &heldLine{msg: "trying on while the store refuses", logged: make(chan struct{}), release: make(chan struct{})}
	releaseLog := sync.OnceFunc(func() { close(held.release) })
	t.Cleanup(releaseLog)
	job := tb.chat(t, "tiny-a", 1)
	ending, endGo := make(chan struct{}), make(chan struct{})
	releaseEnd := sync.OnceFunc(func() { close(endGo) })
	t.Cleanup(releaseEnd)
	cfg := worker.WithBeforeStoreDone(worker.Config{Logger: slog.New(held)}, func(id string) {
		if id == job.ID {
			close(ending)
			<-endGo // the job's end holds Run's background work
		}
	})
	cfg = worker.WithLimitReadFault(cfg, func(uint64) error { return fmt.Errorf("injected: %w", broker.ErrUnavailable) })
	cfg.Store, cfg.Target, cfg.RetryDelay = tb.b.Store, tb.target, 5*time.Millisecond
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go runStoppedWorker(w, ran) // its frame tells this test's Run among the parallel tests'
	t.Cleanup(func() {
		_ = w.Stop(context.Background())
		if err := <-ran; err != nil {
			t.Errorf("worker Run: %v", err)
		}
	})
	select {
	case <-ending:
	case <-ctxT(t).Done():
		t.Fatal("the job's end was never stored")
	}
	adv := fmt.Sprintf(`{"type":"io.nats.jetstream.advisory.v1.max_deliver","stream":%q,"consumer":"c","stream_seq":%d,"deliveries":3}`, broker.QueueStream, 1<<40)
	if err := tb.b.Conn.Publish("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."+broker.QueueStream+".c", []byte(adv)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held.logged:
	case <-ctxT(t).Done():
		t.Fatal("the advisory's end was not refused")
	}
	// Stopped on a goroutine of its own: Stop returns after Run, which would order Run's
	// wait before the handler goes on.
	go func() { _ = w.Stop(context.Background()) }()
	eventually(t, 10*time.Second, "Run waiting for the job's end", func() bool {
		return goroutineIn("worker_test.runStoppedWorker(", "sync.(*WaitGroup).Wait(")
	})
	releaseEnd()
	// Not from ran: that would order Run's end before the handler goes on.
	eventually(t, 10*time.Second, "Run returned", func() bool { return !goroutineIn("worker_test.runStoppedWorker(") })
	releaseLog()
	tb.waitState(t, job.ID, broker.StateDone)
}

// runStoppedWorker runs w until it is stopped, and sends Run's error to ran.
func runStoppedWorker(w *worker.Worker, ran chan<- error) { ran <- w.Run(context.Background()) }

// goroutineIn reports whether a goroutine's stack now holds every one of frames.
func goroutineIn(frames ...string) bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		all := true
		for _, f := range frames {
			all = all && strings.Contains(g, f)
		}
		if all {
			return true
		}
	}
	return false
}
