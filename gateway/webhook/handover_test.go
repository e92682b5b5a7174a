package webhook

import (
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A dispatcher that stops in order (a SIGTERM, a restart for an upgrade) gives the
// consumer's pin up at once: another foreman's dispatcher sends the next event within
// seconds, where it used to wait out the pin's 2-minute TTL (ADR-0052, amended).
func TestStoppedDispatcherGivesWayAtOnce(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	stopFirst := runDispatcher(t, fastConfig(b.Store))
	first := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL}})
	if h := rcv.next(t); h.job == nil || h.job.ID != first.ID {
		t.Fatalf("got %s, want the queued event of %s", h.body, first.ID)
	} // the first dispatcher took an event: it holds the pin
	runDispatcher(t, fastConfig(secondForeman(t, b)))
	stopFirst()

	second := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL}})
	// Far below the pin's TTL, with room for a loaded machine.
	const within = 20 * time.Second
	select {
	case h := <-rcv.hits:
		if h.job == nil || h.job.ID != second.ID || h.job.State != broker.StateQueued {
			t.Fatalf("got %s, want the queued event of %s", h.body, second.ID)
		}
	case <-time.After(within):
		t.Fatalf("no webhook within %v of the pinned dispatcher's stop: the other waits for the pin's TTL", within)
	}
}
