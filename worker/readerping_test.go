package worker_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// otherForeman opens the Store of another foreman on the bundle's NATS server: a gateway
// whose calls this bundle's worker runs, or one that only watches.
func (tb *testBundle) otherForeman(t *testing.T) *broker.Store {
	t.Helper()
	nc, err := tb.b.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	st, err := broker.Open(ctxT(t), broker.Config{Conn: nc})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// openFeed opens job id's feed on store st.
func openFeed(t *testing.T, st *broker.Store, id string) *broker.JobFeed {
	t.Helper()
	f, err := st.Feed(id, broker.FeedConfig{Buffer: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

// feedAnswer reads feed's frames up to the final marker, which must say done.
func feedAnswer(t *testing.T, feed *broker.JobFeed) string {
	t.Helper()
	ctx := waitCtx(t)
	var got string
	for {
		ev, ok := feed.Next()
		if !ok {
			select {
			case <-feed.Ready():
			case <-ctx.Done():
				t.Fatalf("no final marker; frames %q", got)
			}
			continue
		}
		switch ev.Kind {
		case broker.EventFrame:
			got += string(ev.Data)
		case broker.EventFinal:
			if ev.Err != nil {
				t.Fatalf("final %v, want done", ev.Err)
			}
			return got
		case broker.EventGap:
			t.Fatalf("gap %s; frames %q", ev.Gap, got)
		}
	}
}

// submitSync submits a sync chat job of tiny-a for a caller on store st.
func submitSync(t *testing.T, st *broker.Store, id string, feedPing bool) {
	t.Helper()
	j := &broker.Job{ID: id, Kind: broker.KindChat, Model: "tiny-a", Sync: true, Gateway: st.BootID(), FeedPing: feedPing}
	if _, err := st.Submit(ctxT(t), j, []byte(chatBody("tiny-a", 1))); err != nil {
		t.Fatal(err)
	}
}

// A sync job whose caller's feed does not say it answers pings (Job.FeedPing unset: a
// foreman from before ADR-0072) gets none: such a feed would take the ping for an event
// of the job. Its answer goes out as it comes.
func TestSyncJobOfAFeedThatAnswersNoPingIsNotPinged(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.ReaderWait = time.Hour }))
	caller := tb.otherForeman(t)
	id := broker.NewID()
	pings, err := tb.b.Conn.SubscribeSync(broker.PingSubject(id))
	if err != nil {
		t.Fatal(err)
	}
	feed := openFeed(t, caller, id)
	submitSync(t, caller, id, false)
	tb.start(t, worker.Config{})
	if got := feedAnswer(t, feed); got == "" {
		t.Fatal("no frame before the final marker")
	}
	// A ping would have been published on this connection before the answer's frames.
	if err := tb.b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := pings.Pending(); n != 0 {
		t.Errorf("%d pings for a caller that answers none, want none", n)
	}
}

// The runner of a sync job taken by another foreman holds its answer until that
// foreman's feed of the job answers (ADR-0072): a feed of the job on a third foreman,
// a watcher, proves nothing of the caller's subscription and does not end the wait.
func TestSyncAnswerWaitsForTheCallersFeedNotAWatchers(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.ReaderWait = time.Hour }))
	caller, watcher := tb.otherForeman(t), tb.otherForeman(t)
	id := broker.NewID()
	pings, err := tb.b.Conn.SubscribeSync(broker.PingSubject(id)) // hears the pings, answers none
	if err != nil {
		t.Fatal(err)
	}
	watch := openFeed(t, watcher, id)
	submitSync(t, caller, id, true)
	tb.start(t, worker.Config{})
	// Should the test end before the caller's feed is opened, one opened then ends the
	// wait, and the worker stops.
	rescue := true
	t.Cleanup(func() {
		if rescue {
			_, _ = caller.Feed(id, broker.FeedConfig{})
		}
	})
	eventually(t, 20*time.Second, "the target's answer", func() bool { return finishedCalls(tb.fake) == 1 })
	// Two pings after the answer came: the first of them was sent after the one before it
	// failed, with the answer held.
	for range 2 {
		if _, err := pings.NextMsg(10 * time.Second); err != nil {
			t.Fatalf("%v: the runner stopped pinging before the caller's feed was there", err)
		}
	}
	var drained []*nats.Msg
	for {
		m, err := pings.NextMsg(0)
		if err != nil {
			break
		}
		drained = append(drained, m)
	}
	for ev, ok := watch.Next(); ok; ev, ok = watch.Next() {
		if ev.Kind != broker.EventState { // the record's events are no part of the answer
			t.Fatalf("the watcher got %+v (after %d more pings) before the caller's feed was heard", ev, len(drained))
		}
	}
	rescue = false
	feed := openFeed(t, caller, id)
	got := feedAnswer(t, feed)
	if got == "" {
		t.Fatal("the caller got no frame before the final marker")
	}
	if w := feedAnswer(t, watch); w != got {
		t.Errorf("the watcher got %q, the caller %q", w, got)
	}
}

// A sync job whose caller waits on this very process (Job.Gateway is this Store's boot
// id) but whose feed is closed already — the caller left while the worker was taking
// the job — gets no ping, holds nothing and serves no resends: the caller's feed is
// handed the answer in this process (ADR-0035), and none will open again. Before, the
// worker pinged for a reader that could never answer, held the answer up to ReaderWait,
// and kept a subscription on the job's resend subject for 30 s after the job (ADR-0078).
func TestSyncJobOfThisProcessWithItsFeedGoneIsNotHeld(t *testing.T) {
	t.Parallel()
	tb := setup(t, brokertest.WithStore(func(c *broker.Config) { c.ReaderWait = 200 * time.Millisecond }))
	id := broker.NewID()
	pings, err := tb.b.Conn.SubscribeSync(broker.PingSubject(id))
	if err != nil {
		t.Fatal(err)
	}
	submitSync(t, tb.b.Store, id, true) // no feed: its caller is gone
	tb.start(t, worker.Config{})
	tb.waitState(t, id, broker.StateDone)
	// A ping would have been published on this connection before the answer's frames.
	if err := tb.b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := pings.Pending(); n != 0 {
		t.Errorf("%d pings for a caller of this process whose feed is gone, want none", n)
	}
	// No subscription on the resend subject: the server says so at once.
	req := nats.NewMsg(broker.ResendSubject(id))
	req.Header.Set(broker.HeaderResendFrom, "1")
	if _, err := tb.b.Conn.RequestMsg(req, 10*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("a resend request after the job: %v, want no responders (nothing serves resends)", err)
	}
}
