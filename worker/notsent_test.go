package worker_test

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// switchedTarget is the fake Ollama reached through a dialer that, while down is set,
// dials a closed loopback port instead: the connection is refused before any request
// is sent, as when the Mac is off or Ollama restarting.
func switchedTarget(t *testing.T, tb *testBundle, down *atomic.Bool) ollama.Client {
	t.Helper()
	closed := ollamatest.ClosedAddr(t)
	var d net.Dialer
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if down.Load() {
			addr = closed
		}
		return d.DialContext(ctx, network, addr)
	}
	c, err := ollama.NewClient(ollama.ClientConfig{BaseURL: tb.fake.URL, Logger: testLogger(),
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// An async job whose call could not reach the target (the connection refused: the Mac
// off, asleep, Ollama restarting) keeps its attempts: nothing was asked of the target.
// With FOREMAN_MAX_ATTEMPTS=1 such a job failed "attempts exhausted" at the outage's
// first call; now the worker waits for the target and runs it when it is back.
func TestARefusedConnectionSpendsNoAttempt(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 1 }))
	var down atomic.Bool
	down.Store(true)
	jobs := []*broker.Job{tb.chat(t, "tiny-a", 1), tb.chat(t, "tiny-a", 2)}
	w := tb.start(t, worker.Config{Target: switchedTarget(t, tb, &down)})
	eventually(t, 10*time.Second, "the worker paused for the refused target, with a retry stored", func() bool {
		p := w.Paused()
		if p == nil || p.Reason != broker.PauseTargetUnreachable {
			return false
		}
		return record(t, tb, jobs[0].ID).State == broker.StateRetrying
	})
	if got := record(t, tb, jobs[0].ID); got.Attempt != 0 || !strings.Contains(got.Error, "refused") {
		t.Errorf("first job: %s after %d attempts (%q), want retrying with none spent, the refusal said", got.State, got.Attempt, got.Error)
	}
	if n := len(inferenceCalls(tb.fake)); n != 0 {
		t.Errorf("the fake was called %d times while refused", n)
	}

	down.Store(false)
	for _, j := range jobs {
		if got := tb.waitEnded(t, j.ID); got.State != broker.StateDone || got.Attempt != 1 {
			t.Errorf("job %s ended %s (%s) at attempt %d, want done at 1", j.ID, got.State, got.Error, got.Attempt)
		}
	}
}

// A sync job's attempts all count, refused or not: its caller waits on them.
func TestARefusedConnectionCountsForASyncJob(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 1 }))
	var down atomic.Bool
	down.Store(true)
	j, err := tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Sync: true}, []byte(chatBody("tiny-a", 1)))
	if err != nil {
		t.Fatal(err)
	}
	tb.start(t, worker.Config{Target: switchedTarget(t, tb, &down)})
	if got := tb.waitEnded(t, j.ID); got.State != broker.StateFailed || !strings.HasPrefix(got.Error, "attempts exhausted: ") {
		t.Errorf("sync job ended %s (%q), want failed, attempts exhausted", got.State, got.Error)
	}
}

// refusingStreams is the fake Ollama whose first n inference calls are refused at the
// dial (a closed loopback port), while its other calls (the probes) reach it.
type refusingStreams struct {
	ollama.Client
	refused ollama.Client
	n       atomic.Int32
	calls   atomic.Int32
}

func (r *refusingStreams) Stream(ctx context.Context, path string, body []byte, fn func([]byte) error, opts ...ollama.StreamOption) (string, error) {
	r.calls.Add(1)
	if r.n.Add(-1) >= 0 {
		return r.refused.Stream(ctx, path, body, fn, opts...)
	}
	return r.Client.Stream(ctx, path, body, fn, opts...)
}

// An async job whose calls are refused more often than JetStream delivers its message
// (MaxDeliver: MaxAttempts + 2) is requeued at its last delivery, not failed or left
// undelivered, and runs once the target takes its call.
func TestRefusedConnectionsOutlastTheDeliveries(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 1 }))
	var down atomic.Bool
	down.Store(true)
	target := &refusingStreams{Client: tb.target, refused: switchedTarget(t, tb, &down)}
	target.n.Store(4)
	j := tb.chat(t, "tiny-a", 1)
	tb.start(t, worker.Config{Target: target, RetryDelay: time.Millisecond})
	got := tb.waitEnded(t, j.ID)
	if got.State != broker.StateDone || got.Attempt != 1 {
		t.Errorf("job ended %s (%s) at attempt %d, want done at 1", got.State, got.Error, got.Attempt)
	}
	if n := target.calls.Load(); n != 5 {
		t.Errorf("target called %d times, want 5", n)
	}
}
