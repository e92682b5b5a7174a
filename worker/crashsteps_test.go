package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
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

// An async job whose foreman dies after its large result was put in the object store,
// before the done record named it, runs again; a rerun whose result the record holds
// (ADR-0033) names no object, so the first attempt's was left for the object store's
// TTL, a job TTL of the store's room per such crash; so was a sync job's, which ends
// canceled (its caller gone with the foreman) without running again. The job's end
// deletes it. A rerun with a large result of its own keeps the object its record names.
func TestCrashAfterTheResultPutLeavesNoStrayResult(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name      string
		maxTokens int // of the rerun's target: a few tokens make a result the record holds
		kept      bool
		sync      bool // its caller waited on the killed foreman: it ends canceled, unrun
	}{
		{"rerun held in the record", 3, false, false},
		{"rerun stored as an object", 0, true, false},
		{"sync job canceled for its caller gone", 0, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.Exclusive = true }))
			j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
			if c.sync {
				j.Sync, j.Gateway = true, tb.b.Store.BootID()
			}
			if _, err := tb.b.Store.Submit(ctxT(t), j, []byte(largeChatBody)); err != nil {
				t.Fatal(err)
			}
			reached, crashed := make(chan struct{}), make(chan struct{})
			var once sync.Once
			cfg := worker.WithDoneFault(worker.Config{Store: tb.b.Store, Target: tb.target, Logger: testLogger()}, func(string) error {
				once.Do(func() { close(reached) })
				<-crashed
				return nil
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
			tb.b.Restart(t) // the crash, the large result put
			close(crashed)
			cancel1()
			<-done1
			if !tb.resultObject(t, j.ID) {
				t.Fatal("the first attempt's result object is not there")
			}

			var opts []ollamatest.Option
			if c.maxTokens > 0 {
				opts = append(opts, ollamatest.WithMaxTokens(c.maxTokens))
			}
			rerun := ollamatest.New(t, opts...)
			target, err := ollama.NewClient(ollama.ClientConfig{BaseURL: rerun.URL, Logger: testLogger()})
			if err != nil {
				t.Fatal(err)
			}
			tb.start(t, worker.Config{Target: target})
			if c.sync {
				got := tb.waitEnded(t, j.ID)
				tb.waitQueueEmpty(t)
				if got.State != broker.StateCanceled || got.Attempt != 1 {
					t.Fatalf("sync job of the killed foreman: %s, attempt %d (%q); want canceled after its one attempt", got.State, got.Attempt, got.Error)
				}
				if tb.resultObject(t, j.ID) {
					t.Error("result object of the killed foreman's attempt there after the job ended canceled")
				}
				return
			}
			got := tb.waitState(t, j.ID, broker.StateDone)
			tb.waitQueueEmpty(t)
			a, _ := got.Artifact(broker.ResultArtifact)
			if a.Inline == c.kept {
				t.Fatalf("rerun's result artifact %+v: the case needs inline %v", a, !c.kept)
			}
			if has := tb.resultObject(t, j.ID); has != c.kept {
				t.Errorf("result object there after the rerun: %v, want %v (record's artifact %+v)", has, c.kept, a)
			}
			if _, data, err := tb.b.Store.GetArtifact(ctxT(t), j.ID, broker.ResultArtifact); err != nil || int64(len(data)) != a.Size {
				t.Errorf("result.json after the rerun: %d bytes, %v; want %d", len(data), err, a.Size)
			}
		})
	}
}

// A retry kept for a full queue (ADR-0100) keeps its old message, which the queue drops
// at the job TTL's age while the delivery is kept. A foreman killed then left the job's
// record retrying with no message: the restart's reclaim delivers only messages, the
// expiry looks only at messages, and the job was listed retrying, never to run, until
// its record expired (then a 404). The restart's sweep on the embedded server ends it
// failed (ADR-0123).
func TestCrashWhileAKeptRetrysMessageIsGoneEndsItFailed(t *testing.T) {
	t.Parallel()
	const ttl = 12 * time.Second
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) {
		c.Exclusive, c.JobTTL, c.AckWait, c.MaxQueue, c.MaxAttempts = true, ttl, 3*time.Second, 1, 3
	}))
	j := tb.chat(t, "tiny-a", 1)
	tb.fake.FailNext(1, ollamatest.DropMidStream) // the first attempt, a retry
	// Kept past the queue's MaxAge: its due comes after the crash.
	w1, err := worker.New(worker.Config{Store: tb.b.Store, Target: tb.target, Logger: testLogger(), RetryDelay: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	done1 := make(chan error, 1)
	go func() { done1 <- w1.Run(ctx1) }()
	eventually(t, 30*time.Second, "the job retrying", func() bool {
		got, _, err := tb.b.Store.Get(ctxT(t), j.ID)
		return err == nil && got.State == broker.StateRetrying
	})
	tb.waitQueueEmpty(t) // the queue dropped its message at MaxAge, the delivery kept
	tb.b.Restart(t)      // the crash
	cancel1()
	<-done1

	tb.start(t, worker.Config{})
	got := tb.waitEnded(t, j.ID)
	if got.State != broker.StateFailed || got.Error != broker.MessageGoneReason {
		t.Errorf("job ended %s (%q), want failed (%s)", got.State, got.Error, broker.MessageGoneReason)
	}
}
