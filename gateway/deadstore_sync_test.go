package gateway

import (
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A sync client whose job waits in the queue when its own store finds a fault that only
// a restart ends (a stream that failed a write: the disk full or gone read-only) is
// answered the submit's 503 at its next look at the job: the job cannot start before the
// restart (a start is a write), and the restart waits for an operator.
func TestWaitingClientOfAStoreThatNeedsARestartIsAnswered(t *testing.T) {
	t.Parallel()
	var fault atomic.Pointer[error]
	b := newTestBundle(t, withBroker(brokertest.WithStore(func(c *broker.Config) {
		c.Exclusive = true
		c.WriteFault = func() error {
			if err := fault.Load(); err != nil {
				return *err
			}
			return nil
		}
	})), withGateway(func(c *Config) { c.SyncOutageWait = 400 * time.Millisecond })) // a look every 100 ms
	ctx := testCtx(t, 30*time.Second)
	res, _ := waitingChat(t, ctx, b, "false") // no worker: the job stays queued
	err := errors.New("JetStream stream 'FOREMAN > KV_FOREMAN_JOBS' write error: no space left on device")
	fault.Store(&err)
	if b.Broker.Store.CheckWriteFault() == nil {
		t.Fatal("the store took no fault")
	}
	select {
	case got := <-res:
		if msg := errorBody(t, got.Body); got.Status != http.StatusServiceUnavailable ||
			!strings.HasPrefix(msg, "job store cannot write") || !strings.Contains(msg, "restart") {
			t.Fatalf("waiting client got %d %s, want 503 job store cannot write, restart", got.Status, got.Body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting client still waits 10 s after the store's fault was known")
	}
}
