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

// A writer waits for its reader across pings that go unanswered, from before its first
// frame (the target is slow to answer) and on while it holds frames: a NATS-native
// watcher of the job's pings answers none, and the caller's feed is heard only after
// several. The answer then reaches the feed whole.
func TestStreamWriterHoldsItsAnswerAcrossUnansweredPings(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.ReaderWait = time.Hour }))
	id := broker.NewID()
	pings, err := b.Conn.SubscribeSync(broker.PingSubject(id)) // hears the pings, answers none
	if err != nil {
		t.Fatal(err)
	}
	w := b.Store.RemoteStreamWriter(id)
	w.AwaitReader(b.Store.BootID())
	t.Cleanup(w.Close)
	// A ping follows only the failure of the one before: two heard, one failed.
	awaitPings := func(when string) {
		t.Helper()
		for i := range 2 {
			if _, err := pings.NextMsg(10 * time.Second); err != nil {
				t.Fatalf("ping %d %s: %v; want the writer still waiting for its reader", i+1, when, err)
			}
		}
	}
	awaitPings("before the first frame")
	for _, f := range []string{"a\n", "b\n"} {
		if err := w.Frame([]byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	awaitPings("with the frames held")
	feed := feedT(t, b, id, broker.FeedConfig{})
	if err := w.Final(broker.StateDone, "", 0); err != nil {
		t.Fatal(err)
	}
	var got string
	for ev := nextEvent(t, feed); ev.Kind != broker.EventFinal; ev = nextEvent(t, feed) {
		if ev.Kind != broker.EventFrame {
			t.Fatalf("event %+v, want frames then the final marker", ev)
		}
		got += string(ev.Data)
	}
	if got != "a\nb\n" {
		t.Errorf("frames %q, want %q", got, "a\nb\n")
	}
}

// Once its reader was heard, a writer publishes each message as it comes: the frames
// after the wait reach the feed, and so does the final marker.
func TestStreamWriterPublishesDirectlyOnceItsReaderIsHeard(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.ReaderWait = time.Hour }))
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	w := b.Store.RemoteStreamWriter(id)
	w.AwaitReader(b.Store.BootID())
	t.Cleanup(w.Close)
	if err := w.Frame([]byte("a")); err != nil {
		t.Fatal(err)
	}
	// Frame a reached the feed: the wait is over, held or not.
	if ev := nextEvent(t, feed); ev.Kind != broker.EventFrame || string(ev.Data) != "a" {
		t.Fatalf("first event %+v, want frame a", ev)
	}
	if err := w.Frame([]byte("b")); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, feed); ev.Kind != broker.EventFrame || string(ev.Data) != "b" {
		t.Fatalf("second event %+v, want frame b", ev)
	}
	if err := w.Final(broker.StateDone, "", 0); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, feed); ev.Kind != broker.EventFinal || ev.Err != nil {
		t.Fatalf("third event %+v, want the final marker, done", ev)
	}
}

// An attempt cut before its final marker (foreman stopping) ends its wait with Close:
// the frames held go out then, before Close returns, so what the writer's connection
// publishes after them comes after them.
func TestStreamWriterClosePublishesWhatItHeld(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.ReaderWait = time.Hour }))
	id := broker.NewID()
	sub, err := b.Conn.SubscribeSync(broker.StreamSubject(id)) // a watcher: answers no ping
	if err != nil {
		t.Fatal(err)
	}
	w := b.Store.RemoteStreamWriter(id)
	w.AwaitReader(b.Store.BootID())
	if err := w.Frame([]byte("a")); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		w.Close()
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close still waits for a reader")
	}
	if err := b.Conn.Publish(broker.StreamSubject(id), []byte("after")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"a", "after"} {
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil || string(m.Data) != want {
			t.Fatalf("message %v (%v), want %q: the held frame before what follows Close", m, err, want)
		}
	}
	w.Close() // twice: nothing to do
}

// Config.ReaderWait counts from the first message held, not the last: an answer that
// streams on while no reader is heard still goes out once the bound has passed.
func TestStreamWriterReaderWaitCountsFromTheFirstMessageHeld(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.ReaderWait = time.Second }))
	id := broker.NewID()
	// Hears the pings and the stream, answers no ping: each ping waits its whole try.
	watch, err := b.Conn.SubscribeSync(broker.JobWildcard(id))
	if err != nil {
		t.Fatal(err)
	}
	w := b.Store.RemoteStreamWriter(id)
	w.AwaitReader(b.Store.BootID())
	t.Cleanup(w.Close)
	// A frame at each ping: the last one held is always younger than the bound.
	deadline := time.Now().Add(30 * time.Second)
	for n := 0; ; n++ {
		m, err := watch.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("after %d frames: %v; want the held frames out once ReaderWait passed since the first", n, err)
		}
		if m.Subject == broker.StreamSubject(id) {
			if m.Header.Get(broker.HeaderSeq) != "1" {
				t.Fatalf("first message out: seq %s, want 1", m.Header.Get(broker.HeaderSeq))
			}
			break
		}
		if err := w.Frame([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
}
