package worker_test

import (
	"errors"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A frame that cannot be published is a failed attempt: retried while nothing of the
// answer went out, but a sync job whose caller has part of it ends failed, as after a
// target cut off mid-answer: another attempt could not be spliced in, and its frames would
// start again for nobody.
func TestFramePublishFailure(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name      string
		sync      bool
		failAt    int // the frames published before the one that fails
		wantState broker.State
		wantCalls int
	}{
		{"sync, mid-answer", true, 1, broker.StateFailed, 1},
		{"sync, first frame", true, 0, broker.StateDone, 2},
		{"async, mid-answer", false, 1, broker.StateDone, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tb := setup(t)
			failed := make(chan struct{})
			cfg := worker.WithFrameFault(worker.Config{}, func(_ string, published int) error {
				select {
				case <-failed:
					return nil // the first failure only
				default:
				}
				if published != c.failAt {
					return nil
				}
				close(failed)
				return errors.New("nats: connection closed")
			})
			var j *broker.Job
			if c.sync {
				j = tb.syncJob(t, "tiny-a", tb.b.Store.BootID())
			} else {
				j = tb.chat(t, "tiny-a", 1)
			}
			tb.start(t, cfg)
			got := tb.waitState(t, j.ID, c.wantState)
			if c.wantState == broker.StateFailed && got.Error != "relay frame: nats: connection closed" {
				t.Errorf("failed with %q, want the publish's error", got.Error)
			}
			tb.waitQueueEmpty(t)
			if n := callsOf(tb, "tiny-a"); n != c.wantCalls {
				t.Errorf("the target was called %d times, want %d", n, c.wantCalls)
			}
		})
	}
}
