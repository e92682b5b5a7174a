package gateway

import (
	"context"
	"fmt"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// staticQueue is a QueueViewer that answers with one view.
type staticQueue struct{ v *broker.QueueView }

func (q staticQueue) QueueView(context.Context, time.Time) (*broker.QueueView, error) {
	return q.v, nil
}

// deepView is a view of n waiting jobs over 8 models, as the worker makes it.
func deepView(n int) *broker.QueueView {
	v := &broker.QueueView{At: time.Now()}
	for i := range n {
		v.Queued = append(v.Queued, broker.QueuedJob{JobID: broker.NewID(), Model: fmt.Sprintf("m-%d", i%8), Kind: broker.KindChat,
			Priority: broker.PriorityNormal, QueuePosition: i + 1, ETA: v.At.Add(time.Duration(i) * time.Second)})
	}
	return v.Indexed()
}

// BenchmarkQueuePosition times what GET /jobs/{id} adds for a waiting job's position and
// ETA once the queue view is computed (cached), with 50k jobs waiting: the job near the
// queue's end.
func BenchmarkQueuePosition(b *testing.B) {
	v := deepView(50_000)
	s := &Server{cfg: Config{Queue: staticQueue{v}}}
	id := v.Queued[len(v.Queued)-10].JobID
	ctx := context.Background()
	for b.Loop() {
		jv := jobView{ID: id, State: broker.StateQueued, CreatedAt: v.At.Add(-time.Hour)}
		s.addPosition(ctx, &jv, time.Now())
		if jv.QueuePosition == nil {
			b.Fatal("no position")
		}
	}
}

// BenchmarkQueueDepth times GET /queue's depth per model from a cached view of 50k jobs.
func BenchmarkQueueDepth(b *testing.B) {
	v := deepView(50_000)
	for b.Loop() {
		if d := v.Depth(); len(d) != 8 {
			b.Fatalf("depth %v", d)
		}
	}
}
