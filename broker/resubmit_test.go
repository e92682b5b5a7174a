package broker_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// An idempotent retry that queues a job again (its first message lost to a crash between
// Submit's two writes) leaves the job as young as its new message, as a requeue does:
// its record and its stored body kept the first submit's age, expired a TTL after it
// while the new message waited, and the job ended in no state (or failed for want of its
// body). A job submitted with it, left alone, tells when that first age is up.
func TestResubmitRefreshesTheJobsAge(t *testing.T) {
	t.Parallel()
	const (
		ttl        = 6 * time.Second
		maxPayload = 64 << 10
	)
	b := brokertest.New(t,
		brokertest.WithNATS(func(c *natsd.Config) { c.MaxPayload = maxPayload }),
		brokertest.WithStore(func(c *broker.Config) { c.JobTTL = ttl; c.DuplicateWindow = time.Second }))
	ctx := ctxT(t)
	body := func(model string) []byte { // too large for a message: stored apart
		return []byte(`{"model":"` + model + `","x":"` + string(bytes.Repeat([]byte("a"), 2*maxPayload)) + `"}`)
	}
	lost, err := b.Store.Submit(ctx, &broker.Job{Model: "m", Kind: broker.KindChat}, body("m"))
	if err != nil || lost.BodyRef == "" {
		t.Fatalf("submit: %+v, %v; want a body stored apart", lost, err)
	}
	control, err := b.Store.Submit(ctx, &broker.Job{Model: "control", Kind: broker.KindChat}, body("control"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := b.Store.Next(ctx, token(t, "m"))
	if err != nil || d == nil || d.JobID != lost.ID {
		t.Fatalf("next: %+v, %v", d, err)
	}
	if err := b.Store.DeleteQueued(ctx, d.Seq); err != nil { // the publish the crash lost
		t.Fatal(err)
	}
	// The retry comes half a TTL after the submit: the age the job must not keep.
	<-time.After(time.Until(lost.CreatedAt.Add(ttl / 2)))
	if _, err := b.Store.Resubmit(ctx, lost.ID, body("m")); err != nil {
		t.Fatal(err)
	}

	obs, err := b.JetStream(t).ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*ttl, "the control job's record and body expired", func() bool {
		_, _, err := b.Store.Get(ctx, control.ID)
		_, oerr := obs.GetInfo(ctx, control.BodyRef)
		return errors.Is(err, broker.ErrNotFound) && errors.Is(oerr, jetstream.ErrObjectNotFound)
	})
	if j, _, err := b.Store.Get(ctx, lost.ID); err != nil || j.State != broker.StateQueued {
		t.Fatalf("resubmitted job past its first submit's TTL: %+v, %v; want it queued", j, err)
	}
	again, err := b.Store.Next(ctx, token(t, "m"))
	if err != nil || again == nil || again.JobID != lost.ID || !bytes.Equal(again.Body, body("m")) {
		t.Fatalf("resubmitted message past its first submit's TTL: %+v, %v; want the job with its body", again, err)
	}
}
