package broker_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A writer waiting for its reader (ADR-0072) holds its answer while no feed of the job
// answers its ping, and publishes it, in order, once one does: a feed subscribed after
// the first frames still gets them all and the final marker, and the ping is no event
// of its.
func TestStreamWriterHoldsItsAnswerUntilAReaderIsHeard(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.ReaderWait = time.Hour }))
	id := broker.NewID()
	w := b.Store.RemoteStreamWriter(id) // through NATS, as another process writes it
	w.AwaitReader(b.Store.BootID())
	t.Cleanup(w.Close)
	_ = w.SetContentType("application/x-ndjson")
	for _, f := range []string{"a\n", "b\n"} {
		if err := w.Frame([]byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	feed := feedT(t, b, id, broker.FeedConfig{})
	if err := w.Final(broker.StateDone, "", 0); err != nil {
		t.Fatal(err)
	}
	var got string
	for ev := nextEvent(t, feed); ; ev = nextEvent(t, feed) {
		switch ev.Kind {
		case broker.EventFrame:
			got += string(ev.Data)
			continue
		case broker.EventFinal:
			if ev.Err != nil {
				t.Errorf("final %v, want done", ev.Err)
			}
		default:
			t.Errorf("event %+v, want frames then the final marker", ev)
		}
		break
	}
	if got != "a\nb\n" {
		t.Errorf("frames %q, want %q", got, "a\nb\n")
	}
}

// A writer that hears no reader within Config.ReaderWait of its first held message
// publishes its answer all the same, in order: a caller that is gone does not keep the
// job's end from being stored. A canceled job's final marker does not wait at all.
func TestStreamWriterGivesUpWaitingForAReader(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		state broker.State
		wait  time.Duration
	}{
		{broker.StateDone, 50 * time.Millisecond},
		{broker.StateCanceled, time.Hour},
	} {
		b := brokertest.New(t, brokertest.WithStore(func(cfg *broker.Config) { cfg.ReaderWait = c.wait }))
		id := broker.NewID()
		// A reader of the stream subject alone answers no ping: a NATS-native watcher.
		sub, err := b.Conn.SubscribeSync(broker.StreamSubject(id))
		if err != nil {
			t.Fatal(err)
		}
		w := b.Store.RemoteStreamWriter(id)
		w.AwaitReader(b.Store.BootID())
		if err := w.Frame([]byte("a")); err != nil {
			t.Fatal(err)
		}
		if err := w.Final(c.state, "", 0); err != nil {
			t.Fatal(err)
		}
		w.Close()
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil || string(m.Data) != "a" || m.Header.Get(broker.HeaderSeq) != "1" {
			t.Fatalf("%s: first message %v (%v), want frame a, seq 1", c.state, m, err)
		}
		m, err = sub.NextMsg(10 * time.Second)
		if err != nil || m.Header.Get(broker.HeaderFinal) != string(c.state) || m.Header.Get(broker.HeaderSeq) != "2" {
			t.Fatalf("%s: second message %v (%v), want the final marker, seq 2", c.state, m, err)
		}
	}
}

// A writer whose job has a feed in its own process hands it the answer directly
// (ADR-0035): it makes no ping, and holds nothing.
func TestStreamWriterWithALocalFeedDoesNotPing(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.ReaderWait = time.Hour }))
	id := broker.NewID()
	pings, err := b.Conn.SubscribeSync(broker.PingSubject(id))
	if err != nil {
		t.Fatal(err)
	}
	feed := feedT(t, b, id, broker.FeedConfig{})
	w := b.Store.StreamWriter(id)
	w.AwaitReader(b.Store.BootID())
	t.Cleanup(w.Close)
	if err := w.Frame([]byte("a")); err != nil {
		t.Fatal(err)
	}
	// Handed over in the publish itself: it is queued once Frame returns.
	if ev, ok := feed.Next(); !ok || ev.Kind != broker.EventFrame || string(ev.Data) != "a" {
		t.Fatalf("feed's first event %+v (%v), want frame a at once", ev, ok)
	}
	if err := w.Final(broker.StateDone, "", 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := pings.Pending(); n != 0 {
		t.Errorf("%d pings, want none", n)
	}
}

// A feed answers the pings for its own foreman's callers, or naming none, and takes none
// for an event: a watcher of the job on another foreman proves nothing of the caller's
// subscription.
func TestFeedAnswersItsForemansPings(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	ping := func(gateway string) error {
		m := nats.NewMsg(broker.PingSubject(id))
		if gateway != "" {
			m.Header.Set(broker.HeaderGateway, gateway)
		}
		_, err := b.Conn.RequestMsg(m, 200*time.Millisecond)
		return err
	}
	for _, gw := range []string{b.Store.BootID(), ""} {
		if err := ping(gw); err != nil {
			t.Errorf("ping for %q: %v, want an answer", gw, err)
		}
	}
	if err := ping(broker.NewID()); !errors.Is(err, nats.ErrTimeout) {
		t.Errorf("ping for another foreman's caller: %v, want no answer", err)
	}
	if ev, ok := feed.Next(); ok {
		t.Errorf("event %+v from pings, want none", ev)
	}
}
