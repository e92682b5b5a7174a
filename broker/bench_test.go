package broker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// latencies collects the duration of each operation of a benchmark, from any goroutine.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// report adds p50 and p99 (in ms) to the benchmark's metrics.
func (l *latencies) report(b *testing.B) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return
	}
	slices.Sort(l.d)
	at := func(q float64) float64 {
		return float64(l.d[min(len(l.d)-1, int(q*float64(len(l.d))))].Microseconds()) / 1000
	}
	b.ReportMetric(at(0.50), "p50-ms")
	b.ReportMetric(at(0.99), "p99-ms")
}

var benchBody = []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hello world"}]}`)

func benchStore(b *testing.B) *brokertest.Bundle {
	return brokertest.New(b, brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 10_000_000 }))
}

// BenchmarkSubmit measures a durable submit (record + enqueue, SyncAlways on) from one
// caller at a time: the latency a single HTTP request sees.
func BenchmarkSubmit(b *testing.B) {
	bb := benchStore(b)
	ctx := context.Background()
	var lat latencies
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := bb.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, benchBody); err != nil {
			b.Fatal(err)
		}
		lat.add(time.Since(start))
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "submits/s")
	lat.report(b)
}

// BenchmarkSubmitParallel measures throughput with many concurrent submitters, as under
// load from many HTTP clients.
func BenchmarkSubmitParallel(b *testing.B) {
	bb := benchStore(b)
	ctx := context.Background()
	var lat latencies
	b.ReportAllocs()
	b.SetParallelism(16)
	var once sync.Once
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			start := time.Now()
			if _, err := bb.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, benchBody); err != nil {
				once.Do(func() { b.Error(err) })
				return
			}
			lat.add(time.Since(start))
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "submits/s")
	lat.report(b)
}

// BenchmarkSubmitAndTake measures a submit followed by the worker's take of it (fetch
// and record read, Store.JobOf), one job at a time: the part of a sync chat before the
// target is called that the submit path decides.
func BenchmarkSubmitAndTake(b *testing.B) {
	bb := benchStore(b)
	ctx := context.Background()
	key, err := broker.KeyOf(&broker.Job{Model: "tiny-a", Kind: broker.KindChat}, benchBody)
	if err != nil {
		b.Fatal(err)
	}
	tok := key.String()
	var lat latencies
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		j, err := bb.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, benchBody)
		if err != nil {
			b.Fatal(err)
		}
		d, err := bb.Store.NextWait(ctx, tok, 5*time.Second)
		if err != nil || d == nil || d.JobID != j.ID {
			b.Fatalf("take: %v %v", d, err)
		}
		if _, _, err := bb.Store.JobOf(ctx, d); err != nil {
			b.Fatal(err)
		}
		lat.add(time.Since(start))
		b.StopTimer()
		if err := bb.Store.Finish(ctx, d); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "jobs/s")
	lat.report(b)
}

// BenchmarkSubmitFloor sets a submit beside the least any durable submit can cost on
// this store: one record-sized SyncAlways write to the jobs bucket and nothing else, as
// a layout with a single write per submit would make. Run in one go, the two show how
// much of a submit is the second write and how much is the disk (ADR-0039).
func BenchmarkSubmitFloor(b *testing.B) {
	for _, callers := range []int{1, 16} {
		b.Run(fmt.Sprintf("one-write/callers=%d", callers), func(b *testing.B) {
			bb := benchStore(b)
			kv, err := jetstream.New(bb.Conn)
			if err != nil {
				b.Fatal(err)
			}
			bucket, err := kv.KeyValue(context.Background(), broker.JobsBucket)
			if err != nil {
				b.Fatal(err)
			}
			rec, err := json.Marshal(&broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, State: broker.StateQueued})
			if err != nil {
				b.Fatal(err)
			}
			runCallers(b, callers, func(ctx context.Context) error {
				// A job key, so the write is republished as every record write is.
				_, err := bucket.Create(ctx, "job."+broker.NewID(), rec)
				return err
			})
		})
		b.Run(fmt.Sprintf("submit/callers=%d", callers), func(b *testing.B) {
			bb := benchStore(b)
			runCallers(b, callers, func(ctx context.Context) error {
				_, err := bb.Store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, benchBody)
				return err
			})
		})
	}
}

// runCallers runs op b.N times in all from callers goroutines and reports ops/s, p50
// and p99.
func runCallers(b *testing.B, callers int, op func(ctx context.Context) error) {
	ctx := context.Background()
	var (
		lat  latencies
		next atomic.Int64
		wg   sync.WaitGroup
		once sync.Once
	)
	b.ResetTimer()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				start := time.Now()
				if err := op(ctx); err != nil {
					once.Do(func() { b.Error(err) })
					return
				}
				lat.add(time.Since(start))
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
	lat.report(b)
}
