package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// fillQueue publishes n queue messages spread over models, straight into the stream (no
// job records: selection never reads them), pipelined so a 100k backlog builds in seconds.
func fillQueue(b *testing.B, bundle *brokertest.Bundle, n, models int) {
	b.Helper()
	js := bundle.JetStream(b)
	tokens := make([]string, models)
	for i := range tokens {
		tokens[i], _ = broker.ModelToken(fmt.Sprintf("bench-%02d", i))
	}
	for i := range n {
		m := nats.NewMsg(broker.QueueSubject(tokens[i%models]))
		m.Header.Set(broker.HeaderJobID, broker.NewID())
		m.Header.Set(broker.HeaderModel, fmt.Sprintf("bench-%02d", i%models))
		m.Header.Set(broker.HeaderKind, string(broker.KindChat))
		m.Data = []byte(`{"model":"bench"}`)
		if _, err := js.PublishMsgAsync(m); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 { // stay under the async publish window
			<-js.PublishAsyncComplete()
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		b.Fatal("backlog publish timed out")
	}
	if got, _ := bundle.Store.QueueLen(context.Background()); got != uint64(n) {
		b.Fatalf("queue holds %d, want %d", got, n)
	}
}

// BenchmarkSelect measures one selection (queue index refresh with one dirty model, plan,
// fetch) as the worker does it after every finished job, at growing queue depths over 50
// models. Depths above 1k take a while to build; -short skips them.
func BenchmarkSelect(b *testing.B) {
	for _, depth := range []int{1_000, 10_000, 100_000} {
		if depth > 1_000 && testing.Short() {
			continue
		}
		bundle := brokertest.New(b, brokertest.WithStore(func(c *broker.Config) {
			c.MaxQueue = 200_000
			c.MaxAttempts = 1_000_000 // NAKed benchmark messages must never hit MaxDeliver
		}))
		fillQueue(b, bundle, depth, 50)
		w, err := New(Config{Store: bundle.Store, Target: nopTarget{}})
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		b.Run("depth="+strconv.Itoa(depth), func(b *testing.B) {
			for b.Loop() {
				d, _, err := w.next(ctx)
				if err != nil || d == nil {
					b.Fatalf("next: %v %v", d, err)
				}
				// Put it back so the depth stays; the model's head counts as moved.
				if err := d.Msg.Nak(); err != nil {
					b.Fatal(err)
				}
				w.index.touch(d.Token)
			}
		})
		bundle.Stop()
	}
}

// BenchmarkPlan is the pure selection over 50 models.
func BenchmarkPlan(b *testing.B) {
	now := time.Now()
	c := choice{Loaded: []string{"m07"}, Current: "m07", Consecutive: 3, Now: now, MaxConsecutive: 8, MaxWait: time.Minute}
	for i := range 50 {
		c.Heads = append(c.Heads, head{Token: fmt.Sprintf("m%02d", i), Seq: uint64(50 - i), Enqueued: now.Add(-time.Duration(i) * time.Second)})
	}
	for b.Loop() {
		plan(c)
	}
}

// BenchmarkJob measures a whole job through the worker against the zero-delay fake (one
// token), and the same request made directly; the difference is the worker's overhead.
func BenchmarkJob(b *testing.B) {
	fake := ollamatest.NewServer(ollamatest.Config{Tokens: 1})
	defer fake.Close()
	target, err := ollama.NewClient(ollama.ClientConfig{BaseURL: fake.URL})
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`)
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			if _, err := target.Stream(context.Background(), "/api/chat", body, func([]byte) error { return nil }); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("worker", func(b *testing.B) {
		bundle := brokertest.New(b, brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 1_000_000 }))
		ctx := context.Background()
		done := make(chan struct{}, b.N)
		sub, err := bundle.Conn.Subscribe(broker.StateWildcard, func(m *nats.Msg) {
			if j, err := broker.DecodeJob(m.Data); err == nil && j.State == broker.StateDone {
				done <- struct{}{}
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Unsubscribe()
		for range b.N {
			if _, err := bundle.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, body); err != nil {
				b.Fatal(err)
			}
		}
		w, err := New(Config{Store: bundle.Store, Target: target})
		if err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		rctx, cancel := context.WithCancel(ctx)
		ran := make(chan error, 1)
		go func() { ran <- w.Run(rctx) }()
		for range b.N {
			<-done
		}
		b.StopTimer()
		cancel()
		<-ran
	})
}

// nopTarget satisfies ollama.Client for benchmarks that never run a job.
type nopTarget struct{}

var errNop = errors.New("nop target")

func (nopTarget) Do(context.Context, string, string, http.Header, io.Reader) (*http.Response, error) {
	return nil, errNop
}
func (nopTarget) Stream(context.Context, string, []byte, func([]byte) error, ...ollama.StreamOption) (string, error) {
	return "", errNop
}
func (nopTarget) Tags(context.Context) (*ollama.ListResponse, []byte, error) {
	return nil, nil, errNop
}
func (nopTarget) Ps(context.Context) (*ollama.ProcessResponse, []byte, error) {
	return nil, nil, errNop
}
func (nopTarget) Version(context.Context) (*ollama.VersionResponse, error) {
	return nil, errNop
}
