package worker

import (
	"fmt"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// BenchmarkQueueView measures computing the queue view (the order of every waiting job
// by the pick rule, with ETAs) for 10k queued jobs over 4 models, 3 classes and 5
// programs (60 queues), from a backlog already in memory.
func BenchmarkQueueView(b *testing.B) {
	store := brokertest.New(b).Store // its settings only: the backlog is in memory
	for _, programs := range []int{1, 5, 50} {
		b.Run(fmt.Sprintf("programs=%d", programs), func(b *testing.B) {
			now := time.Now()
			msgs := make([]broker.QueuedMessage, 0, 10_000)
			for i := range 10_000 {
				model := fmt.Sprintf("m%d", i%4)
				class := []broker.Priority{broker.PriorityHigh, broker.PriorityNormal, broker.PriorityLow}[i%3]
				prog := ""
				if programs > 1 {
					prog = fmt.Sprintf("p%d", i%programs)
				}
				msgs = append(msgs, broker.QueuedMessage{
					Token: queueKey(b, model, prog, class), Seq: uint64(i + 1), Enqueued: now.Add(time.Duration(i-10_000) * time.Millisecond),
					JobID: broker.NewID(), Model: model, Kind: broker.KindChat, Priority: class, Program: prog,
				})
			}
			w := &Worker{cfg: Config{MaxConsecutive: 8, MaxWait: 2 * time.Minute}, store: store, served: map[string]uint64{}, times: newDurations()}
			w.lastModel = runnerKey(b, "m1")
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if v, _ := w.computeView(msgs, nil, nil, nil, now); len(v.Queued) != 10_000 {
					b.Fatalf("%d queued", len(v.Queued))
				}
			}
		})
	}
}
