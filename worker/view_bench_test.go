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
// programs (60 queues), from a backlog already in memory; and for 50k jobs over 8 models
// (120 queues), a deep queue; and for 50k jobs over 40 models and 20 programs (2,400
// queues, 120 runners and classes), a deep queue of many models.
func BenchmarkQueueView(b *testing.B) {
	store := brokertest.New(b).Store // its settings only: the backlog is in memory
	for _, c := range []struct{ programs, models, jobs int }{{1, 4, 10_000}, {5, 4, 10_000}, {50, 4, 10_000}, {5, 8, 50_000}, {20, 40, 50_000}} {
		programs, n := c.programs, c.jobs
		name := fmt.Sprintf("programs=%d", programs)
		if n != 10_000 {
			name = fmt.Sprintf("programs=%d/models=%d/jobs=%d", programs, c.models, n)
		}
		b.Run(name, func(b *testing.B) {
			now := time.Now()
			msgs := make([]broker.QueuedMessage, 0, n)
			for i := range n {
				model := fmt.Sprintf("m%d", i%c.models)
				class := []broker.Priority{broker.PriorityHigh, broker.PriorityNormal, broker.PriorityLow}[i%3]
				prog := ""
				if programs > 1 {
					prog = fmt.Sprintf("p%d", i%programs)
				}
				msgs = append(msgs, broker.QueuedMessage{
					Token: queueKey(b, model, prog, class), Seq: uint64(i + 1), Enqueued: now.Add(time.Duration(i-n) * time.Millisecond),
					JobID: broker.NewID(), Model: model, Kind: broker.KindChat, Priority: class, Program: prog,
				})
			}
			w := &Worker{cfg: Config{MaxConsecutive: 8, MaxWait: 2 * time.Minute}, store: store, served: map[string]uint64{}, times: newDurations(maxLearnedModels, func(string) bool { return true })}
			w.lastModel = runnerKey(b, "m1")
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if v, _ := w.computeView(msgs, nil, nil, nil, now); len(v.Queued) != n {
					b.Fatalf("%d queued", len(v.Queued))
				}
			}
		})
	}
}
