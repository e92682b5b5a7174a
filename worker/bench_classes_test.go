package worker

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// mixedKeys are the queues of models × classes × programs, a quarter of them with load
// options.
func mixedKeys(b *testing.B, models, programs int) []string {
	b.Helper()
	var keys []string
	for m := range models {
		for _, class := range []broker.Priority{broker.PriorityHigh, broker.PriorityNormal, broker.PriorityLow} {
			for p := range programs {
				body := `{}`
				if p%4 == 3 {
					body = `{"options":{"num_ctx":2048}}`
				}
				prog := ""
				if p > 0 {
					prog = "prog-" + strconv.Itoa(p)
				}
				k, err := broker.KeyOf(&broker.Job{Model: fmt.Sprintf("bench-%02d", m), Priority: class, Program: prog}, []byte(body))
				if err != nil {
					b.Fatal(err)
				}
				keys = append(keys, k.String())
			}
		}
	}
	return keys
}

// fillKeys publishes n queue messages spread over keys, as fillQueue does over models.
func fillKeys(b *testing.B, bundle *brokertest.Bundle, n int, keys []string) {
	b.Helper()
	js := bundle.JetStream(b)
	for i := range n {
		key, _ := broker.ParseQueueKey(keys[i%len(keys)])
		model, _ := broker.ModelFromToken(key.Model)
		m := nats.NewMsg(broker.QueueSubject(key.String()))
		m.Header.Set(broker.HeaderJobID, broker.NewID())
		m.Header.Set(broker.HeaderModel, model)
		m.Header.Set(broker.HeaderKind, string(broker.KindChat))
		m.Data = []byte(`{"model":"bench"}`)
		if _, err := js.PublishMsgAsync(m); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 {
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

// BenchmarkSelectClasses is BenchmarkSelect over 50 models × 3 classes × 1 or 4 programs
// (150 or 600 queues, a quarter of the programs' with load options): one selection after
// every finished job, turns included. -short skips the depths above 1k.
func BenchmarkSelectClasses(b *testing.B) {
	for _, programs := range []int{1, 4} {
		for _, depth := range []int{1_000, 10_000, 100_000} {
			if depth > 1_000 && testing.Short() {
				continue
			}
			benchSelectKeys(b, depth, mixedKeys(b, 50, programs), false)
		}
	}
}

// BenchmarkSelectClassesPublished is BenchmarkSelectClasses over 600 queues at 10k with
// one job published (untimed) before every selection, as under a steady submit load: the
// selection reads the new message rather than every queue's count.
func BenchmarkSelectClassesPublished(b *testing.B) {
	benchSelectKeys(b, 10_000, mixedKeys(b, 50, 4), true)
}

func benchSelectKeys(b *testing.B, depth int, keys []string, publish bool) {
	{
		bundle := brokertest.New(b, brokertest.WithStore(func(c *broker.Config) {
			c.MaxQueue = 200_000
			c.MaxAttempts = 1_000_000
		}))
		fillKeys(b, bundle, depth, keys)
		w, err := New(Config{Store: bundle.Store, Target: nopTarget{}})
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		pick := func(b *testing.B) {
			d, _, err := w.next(ctx)
			if err != nil || d == nil {
				b.Fatalf("next: %v %v", d, err)
			}
			w.took(d.Token)
			if err := d.Msg.Nak(); err != nil {
				b.Fatal(err)
			}
			w.index.touch(d.Token)
		}
		// Turns visit every queue: create their consumers before measuring, as a running
		// worker has them.
		for range len(keys) {
			pick(b)
		}
		js := bundle.JetStream(b)
		b.Run(fmt.Sprintf("queues=%d/depth=%d", len(keys), depth), func(b *testing.B) {
			i := 0
			for b.Loop() {
				if publish {
					b.StopTimer()
					publishKey(b, js, keys[i%len(keys)])
					i++
					b.StartTimer()
				}
				pick(b)
			}
		})
		bundle.Stop()
	}
}

func publishKey(b *testing.B, js jetstream.JetStream, token string) {
	key, _ := broker.ParseQueueKey(token)
	model, _ := broker.ModelFromToken(key.Model)
	m := nats.NewMsg(broker.QueueSubject(token))
	m.Header.Set(broker.HeaderJobID, broker.NewID())
	m.Header.Set(broker.HeaderModel, model)
	m.Header.Set(broker.HeaderKind, string(broker.KindChat))
	m.Data = []byte(`{"model":"bench"}`)
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkPlanClasses is the pure selection over 600 queues (50 models × 3 classes × 4
// programs).
func BenchmarkPlanClasses(b *testing.B) {
	now := time.Now()
	c := choice{Loaded: []string{"m07.d"}, Current: "m07.d", Consecutive: 3, Now: now, MaxConsecutive: 8, MaxWait: time.Minute, Served: map[string]uint64{}}
	classes := []broker.Priority{broker.PriorityHigh, broker.PriorityNormal, broker.PriorityLow}
	seq := uint64(0)
	for i := range 50 {
		for _, class := range classes {
			for p := range 4 {
				seq++
				tok := fmt.Sprintf("m%02d.%s.p%d", i, class, p)
				c.Heads = append(c.Heads, head{Token: tok, Runner: fmt.Sprintf("m%02d.d", i), Class: class, Seq: seq, Enqueued: now.Add(-time.Duration(i) * time.Second)})
				c.Served[tok] = uint64(p * 7 % 5)
			}
		}
	}
	for b.Loop() {
		plan(c)
	}
}
