package gateway

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

var _ besideUser = (*worker.Worker)(nil) // foreman serve's Queue hears of them

// besideQueue is a QueueViewer that counts the calls it hears of beside its jobs.
type besideQueue struct{ n atomic.Int32 }

func (q *besideQueue) QueueView(context.Context, time.Time) (*broker.QueueView, error) {
	return &broker.QueueView{At: time.Now()}, nil
}

func (q *besideQueue) TargetUsedBeside() { q.n.Add(1) }

// An embedding passed straight to the own target may load its model in place of the
// worker's: the worker hears of each one's end. A call that loads nothing does not tell.
func TestAnEmbeddingPassedStraightTellsTheWorker(t *testing.T) {
	t.Parallel()
	q := &besideQueue{}
	b := newTestBundle(t, withGateway(func(c *Config) { c.Queue = q }))
	want := int32(0)
	for _, c := range []struct {
		path, body string
		tells      bool
	}{
		{"/api/embed", `{"model":"tiny-embed","input":"x"}`, true},
		{"/api/embeddings", `{"model":"tiny-embed","prompt":"x"}`, true},
		{"/v1/embeddings", `{"model":"tiny-embed","input":"x"}`, true},
		{"/api/show", `{"model":"tiny-embed"}`, false},
	} {
		resp, body := b.request(t, http.MethodPost, c.path, []byte(c.body))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %s", c.path, resp.StatusCode, body)
		}
		if c.tells {
			want++
		}
		// The handler tells it once the answer is relayed, maybe after the client read it.
		eventually(t, 5*time.Second, "the worker heard of the calls beside its jobs after "+c.path, func() bool { return q.n.Load() >= want })
		if n := q.n.Load(); n != want {
			t.Errorf("after %s: the worker heard of %d calls beside its jobs, want %d", c.path, n, want)
		}
	}
}
