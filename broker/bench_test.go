package broker_test

import (
	"context"
	"sync"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// BenchmarkSubmit measures a durable submit (record + enqueue, SyncAlways on) from one
// caller at a time: the latency a single HTTP request sees.
func BenchmarkSubmit(b *testing.B) {
	bb := brokertest.New(b, brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 10_000_000 }))
	ctx := context.Background()
	body := []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hello world"}]}`)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := bb.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, body); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "submits/s")
}

// BenchmarkSubmitParallel measures throughput with many concurrent submitters, as under
// load from many HTTP clients.
func BenchmarkSubmitParallel(b *testing.B) {
	bb := brokertest.New(b, brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 10_000_000 }))
	ctx := context.Background()
	body := []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hello world"}]}`)
	b.ReportAllocs()
	b.SetParallelism(16)
	var once sync.Once
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := bb.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, body); err != nil {
				once.Do(func() { b.Error(err) })
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "submits/s")
}
