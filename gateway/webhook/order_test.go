package webhook

import (
	"slices"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A dispatcher that took a job's queued event and stopped before storing it (a crash, or
// an event left in the client's buffer at a stop) leaves the event with JetStream until
// AckWait. The next dispatcher gets the job's later events first and sends them; the
// queued event, offered again after them, is not sent after the job's done: it is
// recorded as superseded (ADR-0055).
func TestEventOfferedAgainAfterLaterOnesIsSuperseded(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL}})

	// Long enough to outlast the restart and the two writes below on a loaded machine:
	// offered again sooner, the queued event would come before the later ones.
	const ackWait = 6 * time.Second
	standIn, err := b.Store.ConsumeChanges(ctxT(t), broker.ChangeConsumerConfig{
		Durable: "webhooks", AckWait: ackWait, MaxAckPending: 4096,
	})
	if err != nil {
		t.Fatal(err)
	}
	taken, err := standIn.Next()
	if err != nil {
		t.Fatal(err)
	}
	if taken.JobID != j.ID {
		t.Fatalf("the stand-in took an event of %s, want %s", taken.JobID, j.ID)
	}
	standIn.Stop() // never acked
	b.Restart(t)   // the stand-in's pin on the consumer goes with its server

	setState(t, b.Store, j.ID, broker.StateWorking)
	setState(t, b.Store, j.ID, broker.StateDone)
	cfg := fastConfig(b.Store)
	cfg.AckWait = ackWait
	runDispatcher(t, cfg)
	var got []broker.State
	for range 2 {
		got = append(got, rcv.next(t).job.State)
	}
	if want := []broker.State{broker.StateWorking, broker.StateDone}; !slices.Equal(got, want) {
		t.Fatalf("events delivered as %v, want %v", got, want)
	}
	// The queued event comes again after AckWait; once it is taken and handled, nothing
	// more arrives.
	noMoreDeliveries(t, b, rcv)
	queuedID := (&event{jobID: j.ID, rev: taken.Rev}).webhookID()
	log := waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool { return len(l) == 3 })
	if a := log[2]; a.WebhookID != queuedID || a.Outcome != broker.OutcomeSuperseded || a.State != broker.StateQueued || a.Attempt != 0 {
		t.Fatalf("delivery log %+v, want the queued event %s last, superseded", log, queuedID)
	}
}
