package worker_test

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// errPutTimedOut is a result put that ran out of time, as Store.StoreArtifact returns it
// (nats.go's object put answers its context's end with nats.ErrTimeout).
var errPutTimedOut = fmt.Errorf("broker: put artifact: %w", fmt.Errorf("%w: %w", broker.ErrUnavailable, nats.ErrTimeout))

// largeChatBody asks the fake for a result over the record's inline limit: it goes to
// the object store.
const largeChatBody = `{"model":"tiny-a","messages":[{"role":"user","content":"long"}],"options":{"num_predict":20000}}`

// A result put that times out (a large result on a slow disk or cluster) while the store
// takes other writes is no refusal: tried on until the worker stopped, each try left its
// chunks behind and the worker went no further than the next job's end. The job is
// handed back, as before ADR-0058, its attempts bounding it, and the job behind it runs.
func TestAsyncResultWhosePutTimesOutIsHandedBack(t *testing.T) {
	t.Parallel()
	var puts atomic.Int32
	tb := setup(t)
	slow := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	tb.start(t, worker.WithMaxAttempts(worker.WithResultFault(worker.Config{}, func(id string) error {
		if id != slow.ID {
			return nil
		}
		puts.Add(1)
		return errPutTimedOut
	}), 2))
	if _, err := tb.b.Store.Submit(ctxT(t), slow, []byte(largeChatBody)); err != nil {
		t.Fatal(err)
	}
	next := tb.submit(t, "tiny-a", broker.KindChat, chatBody("tiny-a", 1))
	tb.waitState(t, next.ID, broker.StateDone)
	rec := tb.waitState(t, slow.ID, broker.StateFailed)
	tb.waitQueueEmpty(t)
	if n := puts.Load(); n != 2 {
		t.Errorf("the result put was tried %d times, want once a run (2)", n)
	}
	if !strings.HasPrefix(rec.Error, "attempts exhausted: ") {
		t.Errorf("failed with %q, want attempts exhausted", rec.Error)
	}
}

// A result put that times out while the job store refuses writes too (a full disk,
// whose failing publishes nats-server leaves unanswered, ADR-0041) is a store refusing:
// the job keeps its answer and stores it once the store takes writes again, run once on
// its last attempt (ADR-0058).
func TestAsyncResultWhosePutTimesOutOnAFullStoreIsKept(t *testing.T) {
	t.Parallel()
	var full atomic.Bool
	var fetched, puts atomic.Int32
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) {
		c.WriteFault = func() error {
			if full.Load() {
				return errors.New("injected write error: no space left on device")
			}
			return nil
		}
	}))
	job := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}
	cfg := worker.WithResultFault(worker.Config{Trace: func(id, stage string) {
		if id == job.ID && stage == worker.StageFetched {
			fetched.Add(1)
		}
	}}, func(id string) error {
		if id != job.ID {
			return nil
		}
		switch puts.Add(1) {
		case 1:
			full.Store(true)
			if tb.b.Store.CheckWriteFault() == nil {
				t.Error("the injected write fault does not stand")
			}
			return errPutTimedOut
		case 2, 3:
			return errPutTimedOut
		}
		// The fault is asked again within a second: the put (which obeys a standing fault)
		// and the done write wait for it.
		full.Store(false)
		return nil
	})
	tb.start(t, worker.WithMaxAttempts(cfg, 1))
	if _, err := tb.b.Store.Submit(ctxT(t), job, []byte(largeChatBody)); err != nil {
		t.Fatal(err)
	}
	rec := tb.waitState(t, job.ID, broker.StateDone)
	tb.waitQueueEmpty(t)
	if n := puts.Load(); n < 4 {
		t.Errorf("the result put was tried %d times, want it held past its timeouts (4 or more)", n)
	}
	if runs, calls := fetched.Load(), finishedCalls(tb.fake); runs != 1 || calls != 1 {
		t.Errorf("delivered %d times, answered by the target %d times; want once", runs, calls)
	}
	if _, stored := rec.Artifact(broker.ResultArtifact); !stored {
		t.Errorf("done without its result")
	}
}
