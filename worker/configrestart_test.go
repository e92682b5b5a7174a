package worker_test

import (
	"context"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// An operator lowers FOREMAN_JOB_TTL and restarts foreman (the embedded server) while
// jobs wait that are older than the new TTL: they end failed (expired), with their
// events, instead of vanishing with their records the moment the store takes the new
// TTL (404, no state, no webhook). The store takes it once they ended.
func TestJobTTLLoweredAtARestartEndsTheOlderJobs(t *testing.T) {
	t.Parallel()
	const lowered = 3 * time.Second
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) {
		c.Exclusive, c.AckWait, c.JobTTL = true, 10*time.Minute, time.Hour
	}))
	jobs := []*broker.Job{tb.chat(t, "tiny-a", 1), tb.chat(t, "tiny-b", 2)}
	eventually(t, 30*time.Second, "the jobs older than the lowered TTL", func() bool {
		return time.Since(jobs[1].CreatedAt) > lowered+lowered/4
	})
	tb.b.RestartWith(t, brokertest.WithStore(func(c *broker.Config) { c.JobTTL = lowered }))
	// Each job's record is read and watched before the worker starts: an ended record
	// lives only the lowered TTL.
	type result struct {
		j   *broker.Job
		err error
	}
	results := make([]chan result, len(jobs))
	for i, j := range jobs {
		results[i] = make(chan result, 1)
		ready := make(chan struct{})
		go func() {
			got, err := tb.watchUntilReady(j.ID, ready, func(j *broker.Job) bool { return j.State.Terminal() })
			results[i] <- result{got, err}
		}()
		<-ready
	}
	tb.fake.SetDown(true) // Ollama away: the jobs wait
	tb.start(t, worker.Config{})
	for i, j := range jobs {
		r := <-results[i]
		if r.err != nil {
			t.Fatalf("job %s: never ended: %v", j.ID, r.err)
		}
		if want := broker.ExpiredError(lowered, 0); r.j.State != broker.StateFailed || r.j.Error != want {
			t.Errorf("job %s: %s %q, want failed %q", j.ID, r.j.State, r.j.Error, want)
		}
	}
	js := tb.b.JetStream(t)
	eventually(t, 30*time.Second, "the lowered TTL on the store's streams", func() bool {
		for _, name := range []string{broker.QueueStream, "KV_" + broker.JobsBucket, "OBJ_" + broker.ArtifactsBucket} {
			st, err := js.Stream(ctxT(t), name)
			if err != nil || st.CachedInfo().Config.MaxAge != lowered {
				return false
			}
		}
		return true
	})
}

// watchUntilReady is watchUntil that closes ready once it has read the record (or failed
// to).
func (tb *testBundle) watchUntilReady(id string, ready chan<- struct{}, stop func(*broker.Job) bool) (*broker.Job, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := tb.b.Store.WatchJob(ctx, id)
	if err != nil {
		close(ready)
		return nil, err
	}
	defer w.Stop()
	j, _, err := tb.b.Store.Get(ctx, id)
	close(ready)
	for ; err == nil; j, err = w.Next(ctx) {
		if stop(j) {
			return j, nil
		}
	}
	return nil, err
}
