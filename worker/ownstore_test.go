package worker_test

import (
	"sync/atomic"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// An async job on its last attempt whose answer the store refuses for a while (its done
// state, or its result) keeps that answer until the store takes it: it ends done, called
// once, its attempt not spent again. Handed back, it was failed "attempts exhausted:
// interrupted" at its next delivery, without running (ADR-0058).
func TestLastAttemptKeepsItsAnswerWhileTheStoreRefuses(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name  string
		body  string
		fault func(worker.Config, func(string) error) worker.Config
	}{
		{"done state", chatBody("tiny-a", 1), worker.WithDoneFault},
		// A result over the record's inline limit goes to the object store.
		{"result", `{"model":"tiny-a","messages":[{"role":"user","content":"long"}],"options":{"num_predict":20000}}`, worker.WithResultFault},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var fetched, refusals atomic.Int32
			tb := setup(t)
			job := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
			cfg := c.fault(worker.Config{Trace: func(id, stage string) {
				if id == job.ID && stage == worker.StageFetched {
					fetched.Add(1)
				}
			}}, func(id string) error {
				if id != job.ID || refusals.Load() >= 3 {
					return nil
				}
				refusals.Add(1)
				return errStoreDown
			})
			tb.start(t, worker.WithMaxAttempts(cfg, 1))
			if _, err := tb.b.Store.Submit(ctxT(t), job, []byte(c.body)); err != nil {
				t.Fatal(err)
			}
			rec := tb.waitState(t, job.ID, broker.StateDone)
			tb.waitQueueEmpty(t)
			if n := refusals.Load(); n != 3 {
				t.Fatalf("the write was refused %d times, want 3", n)
			}
			if runs, calls := fetched.Load(), finishedCalls(tb.fake); runs != 1 || calls != 1 || rec.Attempt != 1 {
				t.Errorf("delivered %d times, answered by the target %d times, attempt %d; want 1 each", runs, calls, rec.Attempt)
			}
			if _, stored := rec.Artifact(broker.ResultArtifact); !stored && rec.Result == nil {
				t.Errorf("done without its result")
			}
		})
	}
}
