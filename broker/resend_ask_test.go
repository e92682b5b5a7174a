package broker_test

import (
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// resendsMsg is stream message seq of job id from a runner that serves resends.
func resendsMsg(id string, seq int, data string) *nats.Msg {
	m := nats.NewMsg(broker.StreamSubject(id))
	m.Header.Set(broker.HeaderSeq, strconv.Itoa(seq))
	m.Header.Set(broker.HeaderResends, "1")
	m.Data = []byte(data)
	return m
}

// heldRunner stands for job id's runner: it hands the test each resend request, and
// answers none of its own.
func heldRunner(t *testing.T, b *brokertest.Bundle, id string) <-chan *nats.Msg {
	t.Helper()
	asks := make(chan *nats.Msg, 16)
	sub, err := b.Conn.Subscribe(broker.ResendSubject(id), func(m *nats.Msg) { asks <- m })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	return asks
}

// nextAsk is the next resend request the runner got.
func nextAsk(t *testing.T, asks <-chan *nats.Msg) *nats.Msg {
	t.Helper()
	select {
	case req := <-asks:
		return req
	case <-time.After(10 * time.Second):
		t.Fatal("no resend asked of the runner")
		return nil
	}
}

// answerAsks answers resend request req, and each one after it until the test ends,
// with msgs and the end marker, as a runner does: an answer too late for its request
// (past the feed's wait for one try) leaves the feed's next try to be answered.
func answerAsks(t *testing.T, b *brokertest.Bundle, asks <-chan *nats.Msg, req *nats.Msg, msgs ...*nats.Msg) {
	t.Helper()
	answer := func(req *nats.Msg) error {
		for _, m := range msgs {
			c := nats.NewMsg(req.Reply)
			c.Header, c.Data = m.Header, m.Data
			if err := b.Conn.PublishMsg(c); err != nil {
				return err
			}
		}
		end := nats.NewMsg(req.Reply)
		end.Header.Set(broker.HeaderResendEnd, strconv.Itoa(len(msgs)))
		return b.Conn.PublishMsg(end)
	}
	if err := answer(req); err != nil {
		t.Fatal(err)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case req := <-asks:
				_ = answer(req)
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
	})
}

// While the runner is asked for a lost frame, a reader that keeps reading (woken by
// other messages of the job) gets nothing, and no more asks are made: the frame that
// showed the gap is not taken for the gap before the runner answered, however often
// Next is called. Once it answers, the reader goes on in order.
func TestNextWaitsForTheResendUnderWay(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.ResendWait = time.Minute }))
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	asks := heldRunner(t, b, id)
	for _, m := range []*nats.Msg{resendsMsg(id, 1, "a\n"), resendsMsg(id, 3, "c\n")} {
		if err := b.Conn.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	if ev := nextEvent(t, feed); ev.Kind != broker.EventFrame || string(ev.Data) != "a\n" {
		t.Fatalf("first event %+v, want frame a", ev)
	}
	var req *nats.Msg
	for req == nil { // frame c arrives, and shows the gap
		if ev, ok := feed.Next(); ok {
			t.Fatalf("event %+v before the runner was asked for frame 2", ev)
		}
		select {
		case req = <-asks:
		case <-feed.Ready():
		case <-time.After(10 * time.Second):
			t.Fatal("no resend asked of the runner")
		}
	}
	if got := req.Header.Get(broker.HeaderResendFrom); got != "2" {
		t.Fatalf("asked from %q, want 2", got)
	}
	for range 2 * 3 { // more than a feed's asks in vain (maxResends)
		if ev, ok := feed.Next(); ok {
			t.Fatalf("event %+v while the runner is asked", ev)
		}
	}
	if n := feed.Resends(); n != 1 {
		t.Fatalf("Resends() = %d while one ask is under way, want 1", n)
	}
	answerAsks(t, b, asks, req, resendsMsg(id, 2, "b\n"), resendsMsg(id, 3, "c\n"))
	for _, want := range []string{"b\n", "c\n"} {
		if ev := nextEvent(t, feed); ev.Kind != broker.EventFrame || string(ev.Data) != want {
			t.Fatalf("after the resend: %+v, want frame %q", ev, want)
		}
	}
}

// The gateway's watchdog calls Mend at each check of an ended job: while an ask is under
// way, each call says the runner is being asked, and none asks again (a runner slow to
// answer would otherwise use up the feed's asks at once, and its answer be reported a gap).
func TestMendWhileAnAskIsUnderWayAsksNoMore(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.ResendWait = time.Minute }))
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	asks := heldRunner(t, b, id)
	if err := b.Conn.PublishMsg(resendsMsg(id, 1, "a\n")); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, feed); ev.Kind != broker.EventFrame || string(ev.Data) != "a\n" {
		t.Fatalf("first event %+v, want frame a", ev)
	}
	if !feed.Mend() {
		t.Fatal("Mend asked nothing")
	}
	req := nextAsk(t, asks)
	for i := range 2 * 3 { // more than a feed's asks in vain (maxResends)
		if !feed.Mend() {
			t.Fatalf("Mend %d, with an ask under way, reports the runner not asked", i+2)
		}
	}
	if n := feed.Resends(); n != 1 {
		t.Fatalf("Resends() = %d after Mends during one ask, want 1", n)
	}
	answerAsks(t, b, asks, req, resendsMsg(id, 2, "b\n"))
	if ev := nextEvent(t, feed); ev.Kind != broker.EventFrame || string(ev.Data) != "b\n" {
		t.Fatalf("after the resend: %+v, want frame b", ev)
	}
}

// A final marker lost alone, every frame before it come, is sent again on Mend: the
// runner's answer to an ask from its last message on holds that message.
func TestALostFinalMarkerAloneIsSentAgainOnMend(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	feed.LoseOnNATS(loseSeqs("3"))
	w := remoteWriter(t, b, id)
	writeFrames(t, w, "a\n", "b\n")
	if err := w.Final(broker.StateDone, "", 0); err != nil {
		t.Fatal(err)
	}
	w.Close()
	for _, want := range []string{"a\n", "b\n"} {
		if ev := nextEvent(t, feed); ev.Kind != broker.EventFrame || string(ev.Data) != want {
			t.Fatalf("%+v, want frame %q", ev, want)
		}
	}
	if !feed.Mend() {
		t.Fatal("Mend asked nothing")
	}
	if ev := nextEvent(t, feed); ev.Kind != broker.EventFinal || ev.Err != nil {
		t.Fatalf("after the mend: %+v, want the done final marker", ev)
	}
}

// readFrames reads n frames of feed (their bytes), sent once its reader was heard.
func readFrames(t *testing.T, f *broker.JobFeed, n int) string {
	t.Helper()
	var got string
	for range n {
		if ev := nextEvent(t, f); ev.Kind != broker.EventFrame {
			t.Fatalf("after %q: %+v, want a frame", got, ev)
		} else {
			got += string(ev.Data)
		}
	}
	return got
}

// resendRequest is a resend request for job id's messages from Foreman-Seq from, its
// answer to reply.
func resendRequest(id, from, reply string) *nats.Msg {
	req := nats.NewMsg(broker.ResendSubject(id))
	req.Reply = reply
	req.Header.Set(broker.HeaderResendFrom, from)
	return req
}

// ask sends the runner of job id one resend request, from Foreman-Seq from, and reads its
// answer: the messages, up to the end marker.
func ask(t *testing.T, b *brokertest.Bundle, id, from string) []*nats.Msg {
	t.Helper()
	inbox := b.Conn.NewInbox()
	sub, err := b.Conn.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := b.Conn.PublishMsg(resendRequest(id, from, inbox)); err != nil {
		t.Fatal(err)
	}
	var got []*nats.Msg
	for {
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("answer to a resend from %s: %v", from, err)
		}
		if n := m.Header.Get(broker.HeaderResendEnd); n != "" {
			if n != strconv.Itoa(len(got)) {
				t.Fatalf("end marker says %s messages, %d came", n, len(got))
			}
			return got
		}
		got = append(got, m)
	}
}

// A resend request that names no message (from 0, or not a number) is ignored: any
// client on the NATS can send one, and the runner's foreman runs on, serving the next
// request. Before the check, from 0 read the messages kept from index -1.
func TestAMalformedResendRequestIsIgnored(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	w := remoteWriter(t, b, id)
	writeFrames(t, w, "a\n", "b\n")
	if got := readFrames(t, feed, 2); got != "a\nb\n" {
		t.Fatalf("frames %q, want a and b", got)
	}
	for _, from := range []string{"0", "x", ""} {
		if err := b.Conn.PublishMsg(resendRequest(id, from, b.Conn.NewInbox())); err != nil {
			t.Fatal(err)
		}
	}
	got := ask(t, b, id, "2")
	if len(got) != 1 || string(got[0].Data) != "b\n" || got[0].Header.Get(broker.HeaderSeq) != "2" {
		t.Fatalf("after malformed requests, a resend from 2 brought %d messages, want frame b", len(got))
	}
}

// A message is kept for a resend before it is published: its reader may ask from it
// the moment it arrives, while the writer's goroutine has not gone on yet. Before, the
// ask came before the message was kept, found nothing from there on, and was left
// unanswered (a test asking from the frame it had just read failed now and then).
func TestAMessageCanBeResentAsSoonAsItArrives(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	w := remoteWriter(t, b, id)
	// The writer stops right after frame b went out, until the test asked for it.
	asked := make(chan struct{})
	goOn := sync.OnceFunc(func() { close(asked) })
	t.Cleanup(goOn) // a failed ask ends the test
	w.AfterPublish(func(m *nats.Msg) {
		if m.Header.Get(broker.HeaderSeq) == "2" {
			<-asked
		}
	})
	writeFrames(t, w, "a\n")
	wrote := make(chan error, 1)
	go func() { wrote <- w.Frame([]byte("b\n")) }()
	if got := readFrames(t, feed, 2); got != "a\nb\n" {
		t.Fatalf("frames %q, want a and b", got)
	}
	got := ask(t, b, id, "2")
	goOn()
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || string(got[0].Data) != "b\n" || got[0].Header.Get(broker.HeaderSeq) != "2" {
		t.Fatalf("a resend from 2 as b arrived brought %d messages, want frame b", len(got))
	}
}

// A writer's Reset (an attempt numbering from 1 again) forgets the messages it kept: a
// resend asked of it then brings none of the earlier attempt's, which a reader of the
// later one would take for its own frames of those numbers.
func TestAResetWriterResendsNoEarlierAttempt(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	w := remoteWriter(t, b, id)
	writeFrames(t, w, "a\n", "b\n")
	if got := readFrames(t, feed, 2); got != "a\nb\n" {
		t.Fatalf("frames %q, want a and b", got)
	}
	if got := ask(t, b, id, "1"); len(got) != 2 {
		t.Fatalf("before the reset, a resend from 1 brought %d messages, want 2", len(got))
	}
	w.Reset()
	writeFrames(t, w, "x\n")
	if got := ask(t, b, id, "1"); len(got) != 1 || string(got[0].Data) != "x\n" {
		t.Fatalf("after the reset, a resend from 1 brought %d messages, want the later attempt's x alone", len(got))
	}
}

// A writer asked for messages it does not have (past its last, or none kept: an earlier
// attempt's writer of a job run again, still subscribed for its keep) leaves the ask
// unanswered, for the writer that has them: its answer of nothing came first, and the
// feed took the gap for unmendable. The runner answers asks in order, on one inbox
// here: an answer to the first would come before the second's frames.
func TestAWriterWithNothingToResendLeavesTheAskToAnother(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	w := remoteWriter(t, b, id)
	writeFrames(t, w, "a\n", "b\n")
	if got := readFrames(t, feed, 2); got != "a\nb\n" { // the writer heard its reader: sent
		t.Fatalf("frames %q, want a and b", got)
	}
	inbox := b.Conn.NewInbox()
	sub, err := b.Conn.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	for _, from := range []string{"3", "1"} {
		if err := b.Conn.PublishMsg(resendRequest(id, from, inbox)); err != nil {
			t.Fatal(err)
		}
	}
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(broker.HeaderResendEnd) != "" || string(m.Data) != "a\n" {
		t.Fatalf("first answer %q (end %q), want frame a of the second ask: the first left unanswered", m.Data, m.Header.Get(broker.HeaderResendEnd))
	}
}

// A runner that does not answer an ask at once (its subscription not yet across a
// re-formed route, a node busy) is asked again within the same ask, until ResendWait:
// its late answer mends the gap, and counts as one ask.
func TestAnAskIsRepeatedUntilTheRunnerAnswers(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.ResendWait = time.Minute }))
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	asks := heldRunner(t, b, id)
	for _, m := range []*nats.Msg{resendsMsg(id, 1, "a\n"), resendsMsg(id, 3, "c\n")} {
		if err := b.Conn.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	if ev := nextEvent(t, feed); ev.Kind != broker.EventFrame || string(ev.Data) != "a\n" {
		t.Fatalf("first event %+v, want frame a", ev)
	}
	// Nothing answers the first request; the second is answered.
	done := make(chan broker.Event, 1)
	go func() {
		for {
			if ev, ok := feed.Next(); ok {
				done <- ev
				return
			}
			select {
			case <-feed.Ready():
			case <-time.After(30 * time.Second):
				close(done)
				return
			}
		}
	}()
	first := nextAsk(t, asks)
	second := nextAsk(t, asks)
	if first.Reply == second.Reply {
		t.Fatal("the request was sent again on the same inbox")
	}
	answerAsks(t, b, asks, second, resendsMsg(id, 2, "b\n"), resendsMsg(id, 3, "c\n"))
	if ev, ok := <-done; !ok || ev.Kind != broker.EventFrame || string(ev.Data) != "b\n" {
		t.Fatalf("after the late answer: %+v, want frame b", ev)
	}
	if n := feed.Resends(); n != 1 {
		t.Errorf("Resends() = %d, want the 1 ask the runner answered late", n)
	}
}

// A closed writer lets its resend subscription go once its keep is over, and its kept
// messages with it: a runner that did not would hold one subscription and a whole
// answer per cross-node sync job for as long as it runs.
func TestAClosedWriterStopsServingResendsAfterItsKeep(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	w := b.Store.RemoteStreamWriter(id)
	w.KeepResendsFor(50 * time.Millisecond)
	w.AwaitReader(b.Store.BootID())
	writeFrames(t, w, "a\n")
	if got := readFrames(t, feed, 1); got != "a\n" {
		t.Fatalf("frames %q, want a", got)
	}
	if got := ask(t, b, id, "1"); len(got) != 1 {
		t.Fatalf("a resend before Close brought %d messages, want 1", len(got))
	}
	w.Close()
	feed.Close() // its subscription takes the subject too (and answers nothing)
	eventually(t, 10*time.Second, "no runner of the job's resends", func() bool {
		_, err := b.Conn.RequestMsg(resendRequest(id, "1", ""), time.Second)
		return errors.Is(err, nats.ErrNoResponders)
	})
}
