package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"sync"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// An async job whose foreman dies after the steps of its end that come before its done
// record (the done marker published; the large result put in the object store) runs
// again after the restart and ends done once, its record naming the result the object
// store holds, which reads whole.
func TestCrashBeforeTheDoneRecordRunsAgainOnce(t *testing.T) {
	t.Parallel()
	for _, step := range []struct {
		name string
		hook func(cfg worker.Config, at func()) worker.Config
	}{
		{"done marker published", func(cfg worker.Config, at func()) worker.Config {
			return worker.WithBeforeStoreDone(cfg, func(string) { at() })
		}},
		{"result put", func(cfg worker.Config, at func()) worker.Config {
			return worker.WithDoneFault(cfg, func(string) error { at(); return nil })
		}},
	} {
		t.Run(step.name, func(t *testing.T) {
			t.Parallel()
			tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.Exclusive = true }))
			j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
			if _, err := tb.b.Store.Submit(ctxT(t), j, []byte(largeChatBody)); err != nil {
				t.Fatal(err)
			}
			reached, crashed := make(chan struct{}), make(chan struct{})
			var once sync.Once
			cfg := step.hook(worker.Config{Store: tb.b.Store, Target: tb.target, Logger: testLogger()}, func() {
				once.Do(func() { close(reached) })
				<-crashed
			})
			w1, err := worker.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx1, cancel1 := context.WithCancel(context.Background())
			done1 := make(chan error, 1)
			go func() { done1 <- w1.Run(ctx1) }()
			select {
			case <-reached:
			case <-waitCtx(t).Done():
				t.Fatal("the job's end never came")
			}
			tb.b.Restart(t) // the crash
			close(crashed)
			cancel1()
			<-done1

			tb.start(t, worker.Config{})
			got := tb.waitState(t, j.ID, broker.StateDone)
			tb.waitQueueEmpty(t)
			if got.Attempt != 2 {
				t.Errorf("attempt %d, want 2", got.Attempt)
			}
			if finished := finishedCalls(tb.fake); finished != 2 {
				t.Errorf("the target finished the job %d times, want 2 (the run before the crash, and once after)", finished)
			}
			f, err := tb.b.Store.OpenArtifact(ctxT(t), j.ID, broker.ResultArtifact)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(f.Reader(ctxT(t), 0, f.Size))
			if err != nil || int64(len(body)) != f.Size || len(body) == 0 {
				t.Fatalf("result: %d bytes of %d, %v", len(body), f.Size, err)
			}
			if !json.Valid(body) && !json.Valid(body[:bytesIndex(body, '\n')]) {
				t.Errorf("result does not read as the answer: %.200s", body)
			}
		})
	}
}

func bytesIndex(b []byte, c byte) int {
	if i := bytes.IndexByte(b, c); i >= 0 {
		return i
	}
	return len(b)
}
