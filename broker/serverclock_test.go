package broker_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A foreman whose clock is off from the NATS server's takes the ages of the server's
// stamps on the server's clock (ADR-0060): from its start on, ServerNow is the server's
// time, and the expiry look's cut-off is the same as a foreman's in step with the server.
// (In these tests the embedded server's clock is the real one.)
func TestServerNowIsTheServersClock(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	for _, off := range []time.Duration{10 * time.Second, -3 * time.Second, -time.Hour} {
		st, err := broker.Open(ctx, broker.Config{Conn: b.Conn, Now: offClock(off)})
		if err != nil {
			t.Fatal(err)
		}
		if d := st.ServerNow().Sub(time.Now()); d > time.Second || d < -time.Second {
			t.Errorf("a foreman %v off: ServerNow %v from the server's clock just after its start", off, d)
		}
		if d := st.StaleBefore().Sub(b.Store.StaleBefore()); d > time.Second || d < -time.Second {
			t.Errorf("a foreman %v off: its expiry cut-off is %v from a foreman in step with the server's", off, d)
		}
		// Read again later, it is carried on by the monotonic clock and new answers.
		if _, err := st.QueueState(ctx); err != nil {
			t.Fatal(err)
		}
		if d := st.ServerNow().Sub(time.Now()); d > time.Second || d < -time.Second {
			t.Errorf("a foreman %v off: ServerNow %v from the server's clock after a queue read", off, d)
		}
	}
}

// A worker whose clock is ahead of the NATS server's by more than RecordGrace still waits
// for the record of a message delivered before it (Submit writes both at once): judged by
// its own clock the message was already too old to wait for, and the job was dropped as
// an orphan. No record comes here: JobOf must wait about RecordGrace before it says so.
func TestJobOfWaitsForTheRecordOnTheServersClock(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	ahead, err := broker.Open(ctx, broker.Config{Conn: b.Conn, Now: offClock(10 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	j := &broker.Job{ID: broker.NewID(), Model: "m", Kind: broker.KindChat}
	b.PublishBare(t, j, `{}`)
	d, err := ahead.Next(ctx, token(t, "m"))
	if err != nil || d == nil {
		t.Fatalf("next: %v %v", d, err)
	}
	began := time.Now()
	_, _, err = ahead.JobOf(ctx, d)
	waited := time.Since(began)
	if !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("JobOf of a message without a record: %v, want ErrNotFound", err)
	}
	// The message is milliseconds old by the server's clock: the wait is nearly the whole
	// grace (half of it leaves room for a slow machine).
	if waited < ahead.RecordGrace()/2 {
		t.Fatalf("JobOf by a clock 10s ahead of the server gave up on the record after %v, want about %v (message %v old by the server's clock)",
			waited.Round(time.Millisecond), ahead.RecordGrace(), began.Sub(d.Enqueued).Round(time.Millisecond))
	}
}

// Spans within the process (the targets cache's age, how long the store has refused
// writes, a name conflict's report) are taken with the monotonic clock: with the wall
// clock alone a step back of an hour (NTP, a VM resumed) kept the targets list of before
// the step for an hour (a dead Mac still routed to, a new one's models 404), and a step
// forward ended them at once. A reading without " m=" has no monotonic part.
func TestSpansTakeTheMonotonicClock(t *testing.T) {
	t.Parallel()
	failed := errors.New("the disk hangs")
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) {
		c.WriteFault = func() error { return failed }
	}))
	ctx := ctxT(t)
	if _, err := b.Store.Targets(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Store.CheckWriteFault(); err == nil {
		t.Fatalf("write fault check: %v", err)
	}
	if _, err := b.Store.Submit(ctx, &broker.Job{Model: "m", Kind: broker.KindChat}, []byte(`{}`)); !errors.Is(err, broker.ErrStoreFailed) {
		t.Fatalf("submit under a write fault: %v, want ErrStoreFailed", err)
	}
	cached, refused := b.Store.SpanMarks()
	for what, at := range map[string]time.Time{"targets cached": cached, "first refusal": refused} {
		if at.IsZero() || !strings.Contains(at.String(), " m=") {
			t.Errorf("%s at %v: no monotonic reading", what, at)
		}
	}
}
