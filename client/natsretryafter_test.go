package client_test

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// TestAFullQueueOverNATSSaysWhenToTryAgain: a submit refused for a full queue over NATS
// (foreman.jobs.submit) carries the wait POST /jobs sends as Retry-After, so the
// client's *APIError has the same RetryAfter by either path. It had none over NATS.
func TestAFullQueueOverNATSSaysWhenToTryAgain(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{MaxQueue: 1})
	ctx := testCtx(t)
	release := f.Fake.Hold("tiny-a")
	defer release()
	c := newClient(t, f.URL, client.WithNATSURL(f.NATSURL, natsAuth...))
	if _, err := c.SubmitAsync(ctx, chatJob("tiny-a", "held")); err != nil {
		t.Fatal(err)
	}
	if err := f.Fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}

	// The refusal straight from the subject, as a NATS-native client reads it.
	nc, err := nats.Connect(f.NATSURL, natsAuth...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	reply, err := nc.RequestWithContext(ctx, "foreman.jobs.submit", []byte(`{"model":"tiny-b","messages":[{"role":"user","content":"refused"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(reply.Data), `{"error":"queue full","status":503,"retry_after":5}`; got != want {
		t.Fatalf("NATS submit to a full queue: reply %s, want %s", got, want)
	}

	_, err = c.SubmitAsync(ctx, chatJob("tiny-b", "refused"))
	var ae *client.APIError
	if !errors.As(err, &ae) || !errors.Is(err, client.ErrQueueFull) {
		t.Fatalf("submit to a full queue over NATS: %v, want an *APIError matching ErrQueueFull", err)
	}
	if ae.RetryAfter <= 0 {
		t.Fatalf("submit to a full queue over NATS: RetryAfter %v, want foreman's Retry-After", ae.RetryAfter)
	}
}
