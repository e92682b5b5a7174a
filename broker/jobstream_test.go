package broker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A job's stream, written by StreamWriter and read by JobFeed: the producer and consumer
// sides of the protocol (ADR-0018).

func feedT(t *testing.T, b *brokertest.Bundle, id string, cfg broker.FeedConfig) *broker.JobFeed {
	t.Helper()
	if cfg.Buffer == 0 {
		cfg.Buffer = 64 << 20
	}
	f, err := b.Store.Feed(id, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

// nextEvent waits for the feed's next event.
func nextEvent(t *testing.T, f *broker.JobFeed) broker.Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		if ev, ok := f.Next(); ok {
			return ev
		}
		select {
		case <-f.Ready():
		case <-timeout:
			t.Fatal("no event")
		}
	}
}

func TestStreamRoundTripByteExact(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	w := b.Store.StreamWriter(id)
	big := bytes.Repeat([]byte("0123456789abcdef"), int(b.Conn.MaxPayload())/16*5/2) // 2.5 max payloads
	frames := [][]byte{[]byte("{\"a\":1}\n"), {}, big, []byte("{\"done\":true}\n")}
	_ = w.SetContentType("application/x-ndjson")
	for _, f := range frames {
		if err := w.Frame(f); err != nil {
			t.Fatal(err)
		}
	}
	if !w.Published() || len(w.Frames()) != len(frames) {
		t.Fatalf("published %v, %d frames kept", w.Published(), len(w.Frames()))
	}
	if err := w.Final(broker.StateDone, "", 0); err != nil {
		t.Fatal(err)
	}
	var got []byte
	pieces := 0
	for {
		ev := nextEvent(t, feed)
		if ev.Kind == broker.EventFinal {
			if ev.Err != nil {
				t.Fatalf("final %v, want done", ev.Err)
			}
			break
		}
		if ev.Kind != broker.EventFrame {
			t.Fatalf("event %+v, want a frame", ev)
		}
		if want := map[bool]string{true: "application/x-ndjson", false: ""}[pieces == 0]; ev.ContentType != want {
			t.Fatalf("piece %d has Content-Type %q, want %q", pieces, ev.ContentType, want)
		}
		if int64(len(ev.Data)) > b.Conn.MaxPayload() {
			t.Fatalf("piece %d has %d bytes", pieces, len(ev.Data))
		}
		pieces++
		got = append(got, ev.Data...)
	}
	if want := bytes.Join(frames, nil); !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, wrote %d", len(got), len(want))
	}
	if pieces < len(frames)+2 {
		t.Fatalf("%d pieces: the large frame was not split", pieces)
	}
}

// A target's Content-Type of any length does not make the first frame unpublishable: a
// long one goes out as its media type, and one too long even so as an octet stream.
func TestStreamWriterBoundsTheContentType(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	for _, c := range []struct{ ct, want string }{
		{"application/x-ndjson; charset=utf-8", "application/x-ndjson; charset=utf-8"},
		{"application/json; junk=" + strings.Repeat("x", 1<<20), "application/json"},
		{"application/json; a=b; a=c; junk=" + strings.Repeat("x", 1<<20), "application/json"}, // bad parameters
		{"application/json; junk; x=" + strings.Repeat("x", 1<<20), "application/json"},
		{"application/" + strings.Repeat("x", 1<<20), "application/octet-stream"},
	} {
		id := broker.NewID()
		feed := feedT(t, b, id, broker.FeedConfig{})
		w := b.Store.StreamWriter(id)
		_ = w.SetContentType(c.ct)
		if err := w.Frame([]byte("{}\n")); err != nil {
			t.Fatalf("frame after a Content-Type of %d bytes: %v", len(c.ct), err)
		}
		if ev := nextEvent(t, feed); ev.Kind != broker.EventFrame || ev.ContentType != c.want {
			t.Fatalf("Content-Type of %d bytes: event %v %q, want a frame with %q", len(c.ct), ev.Kind, ev.ContentType, c.want)
		}
	}
}

// An attempt's answer is bounded (Config.MaxAnswer): a frame that would pass the bound
// is refused, not published, and not kept.
func TestStreamWriterBoundsTheAnswer(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAnswer = 100 }))
	w := b.Store.StreamWriter(broker.NewID())
	if err := w.Frame(bytes.Repeat([]byte("a"), 60)); err != nil {
		t.Fatal(err)
	}
	if err := w.Frame(bytes.Repeat([]byte("b"), 41)); !errors.Is(err, broker.ErrAnswerTooLarge) {
		t.Fatalf("frame passing the bound: %v, want ErrAnswerTooLarge", err)
	}
	if len(w.Frames()) != 1 {
		t.Fatalf("%d frames kept, want the first only", len(w.Frames()))
	}
	w.Reset() // a new attempt starts from nothing
	if err := w.Frame(bytes.Repeat([]byte("c"), 100)); err != nil {
		t.Fatalf("a new attempt's frame of the bound: %v", err)
	}
}

func TestStreamFinalOutcomes(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	for _, c := range []struct {
		state  broker.State
		msg    string
		status int
		want   error
	}{
		{broker.StateDone, "", 0, nil},
		{broker.StateFailed, `"tiny-embed" does not support chat`, 400, &broker.JobError{State: broker.StateFailed, Message: `"tiny-embed" does not support chat`, Status: 400}},
		{broker.StateFailed, "connection reset", 0, &broker.JobError{State: broker.StateFailed, Message: "connection reset"}},
		{broker.StateFailed, "", 0, &broker.JobError{State: broker.StateFailed}},
		{broker.StateCanceled, "by operator", 0, &broker.JobError{State: broker.StateCanceled, Message: "by operator"}},
	} {
		id := broker.NewID()
		feed := feedT(t, b, id, broker.FeedConfig{})
		w := b.Store.StreamWriter(id)
		if err := w.Frame([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := w.Final(c.state, c.msg, c.status); err != nil {
			t.Fatal(err)
		}
		if ev := nextEvent(t, feed); ev.Kind != broker.EventFrame {
			t.Fatalf("%s: first event %+v", c.state, ev)
		}
		ev := nextEvent(t, feed)
		if ev.Kind != broker.EventFinal {
			t.Fatalf("%s: event %+v, want the final marker", c.state, ev)
		}
		var je *broker.JobError
		switch {
		case c.want == nil && ev.Err != nil:
			t.Errorf("%s: %v, want done", c.state, ev.Err)
		case c.want != nil && (!errors.As(ev.Err, &je) || *je != *c.want.(*broker.JobError)):
			t.Errorf("%s: %#v, want %#v", c.state, ev.Err, c.want)
		}
	}
}

// The final marker as any NATS client may publish it: the literal states, a status only
// in 400-599, anything else a failure.
func TestDecodeFinalMarker(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		final, errMsg, status string
		want                  *broker.JobError // nil: done
	}{
		{"done", "", "", nil},
		{"done", "ignored", "500", nil},
		{"canceled", "", "", &broker.JobError{State: broker.StateCanceled}},
		{"canceled", "by user", "409", &broker.JobError{State: broker.StateCanceled, Message: "by user"}},
		{"failed", "boom", "503", &broker.JobError{State: broker.StateFailed, Message: "boom", Status: 503}},
		{"failed", "boom", "200", &broker.JobError{State: broker.StateFailed, Message: "boom"}},
		{"failed", "boom", "999", &broker.JobError{State: broker.StateFailed, Message: "boom"}},
		{"failed", "boom", "x", &broker.JobError{State: broker.StateFailed, Message: "boom"}},
		{"DONE", "", "", &broker.JobError{State: broker.StateFailed}},
		{"weird", "e", "404", &broker.JobError{State: broker.StateFailed, Message: "e", Status: 404}},
	} {
		m := nats.NewMsg(broker.StreamSubject("J"))
		m.Header.Set(broker.HeaderSeq, "1")
		m.Header.Set(broker.HeaderFinal, c.final)
		if c.errMsg != "" {
			m.Header.Set(broker.HeaderError, c.errMsg)
		}
		if c.status != "" {
			m.Header.Set(broker.HeaderStatus, c.status)
		}
		var dec broker.EventDecoder
		ev, ok := dec.Decode(m, func() int { return 0 })
		if !ok || ev.Kind != broker.EventFinal {
			t.Fatalf("%+v: event %+v", c, ev)
		}
		var je *broker.JobError
		if c.want == nil {
			if ev.Err != nil {
				t.Errorf("%+v: %v, want done", c, ev.Err)
			}
		} else if !errors.As(ev.Err, &je) || *je != *c.want {
			t.Errorf("%+v: %#v, want %#v", c, ev.Err, c.want)
		}
	}
}

func rawFrame(id string, seq string, data string) *nats.Msg {
	m := nats.NewMsg(broker.StreamSubject(id))
	if seq != "" {
		m.Header.Set(broker.HeaderSeq, seq)
	}
	m.Data = []byte(data)
	return m
}

func stateEvent(t *testing.T, id string, state broker.State) *nats.Msg {
	t.Helper()
	data, err := json.Marshal(&broker.Job{ID: id, State: state})
	if err != nil {
		t.Fatal(err)
	}
	return &nats.Msg{Subject: broker.StateSubject(id), Data: data}
}

func TestFeedGaps(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	for _, c := range []struct {
		name string
		msgs func(id string) []*nats.Msg
		want string
	}{
		{"missing frame", func(id string) []*nats.Msg {
			return []*nats.Msg{rawFrame(id, "1", "a"), rawFrame(id, "3", "c")}
		}, "expected frame 2, got 3"},
		{"first frame missing", func(id string) []*nats.Msg { return []*nats.Msg{rawFrame(id, "2", "b")} }, "expected frame 1, got 2"},
		{"repeated frame", func(id string) []*nats.Msg {
			return []*nats.Msg{rawFrame(id, "1", "a"), rawFrame(id, "1", "a")}
		}, "expected frame 2, got 1"},
		{"no sequence", func(id string) []*nats.Msg { return []*nats.Msg{rawFrame(id, "", "a")} }, "frame without a valid Foreman-Seq header"},
		{"bad sequence", func(id string) []*nats.Msg { return []*nats.Msg{rawFrame(id, "one", "a")} }, "frame without a valid Foreman-Seq header"},
	} {
		id := broker.NewID()
		feed := feedT(t, b, id, broker.FeedConfig{})
		for _, m := range c.msgs(id) {
			if err := b.Conn.PublishMsg(m); err != nil {
				t.Fatal(err)
			}
		}
		for {
			ev := nextEvent(t, feed)
			if ev.Kind == broker.EventFrame {
				continue
			}
			if ev.Kind != broker.EventGap || ev.Gap != c.want {
				t.Errorf("%s: event %+v, want gap %q", c.name, ev, c.want)
			}
			break
		}
	}
}

// State events come in the connection's order with the stream's: the final marker before
// the terminal state the worker writes after it. Undecodable ones are skipped.
func TestFeedStateEvents(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	w := b.Store.RemoteStreamWriter(id) // through NATS, as another process writes it
	for _, m := range []*nats.Msg{stateEvent(t, id, broker.StateLoading), {Subject: broker.StateSubject(id), Data: []byte("{not json")}} {
		if err := b.Conn.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Frame([]byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := w.Final(broker.StateDone, "", 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Conn.PublishMsg(stateEvent(t, id, broker.StateDone)); err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for len(kinds) < 4 {
		ev := nextEvent(t, feed)
		k := strconv.Itoa(int(ev.Kind))
		if ev.Kind == broker.EventState {
			k = string(ev.Job.State)
		}
		kinds = append(kinds, k)
	}
	want := []string{"loading", strconv.Itoa(int(broker.EventFrame)), strconv.Itoa(int(broker.EventFinal)), "done"}
	if strings.Join(kinds, " ") != strings.Join(want, " ") {
		t.Fatalf("events %v, want %v", kinds, want)
	}
}

// A feed that falls behind loses messages in NATS (a slow consumer): the terminal state
// after the loss is a gap, never a silently shortened answer.
func TestFeedSlowConsumerIsGap(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{Buffer: 1 << 30})
	if err := feed.SetPendingLimits(4, 1<<20); err != nil {
		t.Fatal(err)
	}
	release := feed.Hold()
	w := b.Store.RemoteStreamWriter(id) // through NATS, as another process writes it
	const frames = 148
	for range frames {
		if err := w.Frame([]byte("{}\n")); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Final(broker.StateDone, "", 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for feed.Dropped() == 0 {
		select {
		case <-ctx.Done():
			t.Fatal("no message was dropped")
		case <-time.After(time.Millisecond):
		}
	}
	release()
	// The terminal state goes out once what piled up was taken: into a full pending list
	// it would be dropped too, and nothing would come after it.
	for feed.Pending() > 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("%d messages still pending", feed.Pending())
		case <-time.After(time.Millisecond):
		}
	}
	if err := b.Conn.PublishMsg(stateEvent(t, id, broker.StateDone)); err != nil {
		t.Fatal(err)
	}
	for {
		ev := nextEvent(t, feed)
		switch ev.Kind {
		case broker.EventFrame:
			continue
		case broker.EventGap:
			return
		}
		t.Fatalf("event %+v after a drop, want a gap", ev)
	}
}

// A feed that outgrows its buffer drops what comes next and closes Overflow; what it held
// never went over the buffer.
func TestFeedOverflow(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	const limit = 4 << 10
	var peak int64
	peaks := make(chan int64, 1024)
	feed := feedT(t, b, id, broker.FeedConfig{Buffer: limit, Peak: func(n int64) {
		select {
		case peaks <- n:
		default:
		}
	}})
	w := b.Store.StreamWriter(id)
	frame := []byte(strings.Repeat("x", 500) + "\n")
	for range 40 {
		if err := w.Frame(frame); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-feed.Overflow():
	case <-time.After(10 * time.Second):
		t.Fatalf("no overflow; %d bytes buffered", feed.Buffered())
	}
	for len(peaks) > 0 {
		peak = max(peak, <-peaks)
	}
	if peak == 0 || peak > limit {
		t.Errorf("peak %d bytes, limit %d", peak, limit)
	}
}

// A message's own cost counts against the buffer, not only its bytes: a stream of tiny
// tokens, each a message, took three times the buffer's heap while a slow reader held it.
func TestFeedBufferCountsEachMessage(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	const limit = 32 << 10
	feed := feedT(t, b, id, broker.FeedConfig{Buffer: limit})
	w := b.Store.StreamWriter(id)
	// 400 one-byte frames: about 60 bytes each of data, subject and headers (24 KiB in
	// all), and 400 messages of a few hundred bytes of heap each.
	for range 400 {
		if err := w.Frame([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-feed.Overflow():
	case <-time.After(10 * time.Second):
		t.Fatalf("400 messages held in a %d-byte buffer, counted as %d bytes", limit, feed.Buffered())
	}
}

// Reset starts an attempt's numbering again: a retried job streams from 1.
func TestStreamWriterReset(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	ch := make(chan *nats.Msg, 8)
	sub, err := b.Conn.ChanSubscribe(broker.StreamSubject(id), ch)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	w := b.Store.StreamWriter(id)
	_ = w.SetContentType("application/x-ndjson")
	_ = w.Frame([]byte("a"))
	w.Reset()
	if w.Published() || len(w.Frames()) != 0 {
		t.Fatal("reset kept the attempt")
	}
	_ = w.Frame([]byte("b"))
	for i, want := range []string{"1 application/x-ndjson a", "1  b"} {
		var m *nats.Msg
		select {
		case m = <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d never arrived", i)
		}
		if got := m.Header.Get(broker.HeaderSeq) + " " + m.Header.Get(broker.HeaderContentType) + " " + string(m.Data); got != want {
			t.Errorf("message %d: %q, want %q", i, got, want)
		}
	}
}

func TestJobWildcardMatchesBothSubjects(t *testing.T) {
	t.Parallel()
	id := broker.NewID()
	w := broker.JobWildcard(id)
	for _, subj := range []string{broker.StreamSubject(id), broker.StateSubject(id)} {
		if !strings.HasPrefix(subj, strings.TrimSuffix(w, "*")) || strings.Count(subj, ".") != strings.Count(w, ".") {
			t.Errorf("%s does not match %s", subj, w)
		}
	}
}

// A writer of the same Store (the worker beside the gateway) hands its messages to the
// job's feeds directly (ADR-0035): they arrive while NATS holds every copy back, each
// once (the copies from NATS after are echoes, dropped), and the final marker still comes
// before the terminal state event written after it.
func TestFeedTakesALocalWritersMessagesDirectlyAndOnce(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	w := b.Store.StreamWriter(id)

	blocked := make(chan struct{})
	release := make(chan struct{})
	// Hold the feed's NATS side: its callback waits on the first message it gets.
	releaseFeed := feed.HoldNATS(func() { close(blocked); <-release })
	defer releaseFeed()

	frames := []string{"{\"a\":1}\n", "{\"b\":2}\n", "{\"c\":3}\n"}
	for _, f := range frames {
		if err := w.Frame([]byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Final(broker.StateDone, "", 0); err != nil {
		t.Fatal(err)
	}
	select {
	case <-blocked:
	case <-time.After(10 * time.Second):
		t.Fatal("the feed's NATS callback never got the first copy")
	}
	for i, want := range frames {
		ev := nextEvent(t, feed)
		if ev.Kind != broker.EventFrame || string(ev.Data) != want {
			t.Fatalf("event %d: %+v, want frame %q", i, ev, want)
		}
	}
	if ev := nextEvent(t, feed); ev.Kind != broker.EventFinal || ev.Err != nil {
		t.Fatalf("event: %+v, want the final marker (done)", ev)
	}
	close(release) // the NATS copies now come: every one is an echo
	if err := b.Conn.PublishMsg(stateEvent(t, id, broker.StateDone)); err != nil {
		t.Fatal(err)
	}
	ev := nextEvent(t, feed)
	if ev.Kind != broker.EventState || ev.Job.State != broker.StateDone {
		t.Fatalf("event after the final marker: %+v, want the done state (no copy, no gap)", ev)
	}
	if n := feed.Dropped(); n != 0 {
		t.Fatalf("%d dropped", n)
	}
}

// A local writer's message is the reader's as soon as the write returns, with Ready
// signalled: nothing stands between them but the queue (ADR-0037). Through a goroutine
// of the feed's own it would be there only once that goroutine had run.
func TestFeedHasALocalWritersMessageAtOnce(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	stop := make(chan struct{})
	defer close(stop)
	releaseFeed := feed.HoldNATS(func() { <-stop }) // no copy from NATS: only the local hand-over
	defer releaseFeed()
	w := b.Store.StreamWriter(id)
	for i, f := range []string{"{\"a\":1}\n", "{\"b\":2}\n"} {
		if err := w.Frame([]byte(f)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-feed.Ready():
		default:
			t.Fatalf("frame %d: Ready not signalled when its write returned", i)
		}
		ev, ok := feed.Next()
		if !ok || ev.Kind != broker.EventFrame || string(ev.Data) != f {
			t.Fatalf("frame %d: Next = %+v, %v; want the frame at once", i, ev, ok)
		}
		if ev, ok := feed.Next(); ok {
			t.Fatalf("frame %d: a second event %+v", i, ev)
		}
	}
}

// A message its writer could not publish reaches no feed of the process either: the
// attempt retried after it streams from Foreman-Seq 1 again, and the reader sees that
// stream whole, as it would from NATS.
func TestFeedGetsNoLocalCopyOfAMessageThatWasNotPublished(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	feed := feedT(t, b, id, broker.FeedConfig{})
	closed, err := b.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	if err := b.Store.StreamWriterOn(closed, id).Frame([]byte("lost\n")); err == nil {
		t.Fatal("a frame was published on a closed connection")
	}
	if n := feed.Echoes(); n != 0 {
		t.Fatalf("the feed waits for the NATS copy of %d message(s) never published", n)
	}
	w := b.Store.StreamWriter(id) // the retried attempt, from 1
	if err := w.Frame([]byte("kept\n")); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, feed); ev.Kind != broker.EventFrame || string(ev.Data) != "kept\n" {
		t.Fatalf("first event: %+v, want the retried attempt's frame", ev)
	}
}

// A frame larger than a message goes out in pieces back to back, faster than any reader
// takes them: the feed takes the frame whole, however small its buffer, and overflows
// only at what comes after it. A non-streamed answer of a few MiB (an image, logprobs)
// was cut off as "client too slow" when its reader lost that race.
func TestFeedTakesALargeFrameWhole(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	id := broker.NewID()
	const limit = 4 << 10
	feed := feedT(t, b, id, broker.FeedConfig{Buffer: limit})
	w := b.Store.StreamWriter(id)
	big := bytes.Repeat([]byte("0123456789abcdef"), int(b.Conn.MaxPayload())/16*3) // three messages' worth
	if err := w.Frame(big); err != nil {
		t.Fatal(err)
	}
	// The final marker comes right after, the frame still unread: it is taken too.
	if err := w.Final(broker.StateDone, "", 0); err != nil {
		t.Fatal(err)
	}
	var got []byte
	final := false
	for !final {
		select {
		case <-feed.Overflow():
			t.Fatalf("overflow after %d of the frame's %d bytes (buffer %d)", len(got)+int(feed.Buffered()), len(big), limit)
		case <-feed.Ready():
		case <-time.After(10 * time.Second):
			t.Fatalf("got %d of %d bytes", len(got), len(big))
		}
		for {
			ev, ok := feed.Next()
			if !ok {
				break
			}
			got = append(got, ev.Data...)
			final = final || ev.Kind == broker.EventFinal
		}
	}
	if !bytes.Equal(got, big) {
		t.Fatal("the frame's pieces do not make the frame")
	}
	// Unread, the buffer still bounds what follows a whole frame.
	for range 2 {
		if err := w.Frame(big); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-feed.Overflow():
	case <-time.After(10 * time.Second):
		t.Fatalf("no overflow with two frames unread; %d bytes buffered", feed.Buffered())
	}
}

// Tiny frames count as MinFrameCost bytes each against the answer's bound: each one kept
// costs memory beyond its bytes and a publish of its own, and a target sending a byte a
// line was bounded only after 64 Mi of them (some 2 GiB of kept frames).
func TestStreamWriterBoundsTinyFramesByNumber(t *testing.T) {
	t.Parallel()
	const n = 10
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAnswer = n * broker.MinFrameCost }))
	w := b.Store.StreamWriter(broker.NewID())
	for i := range n {
		if err := w.Frame([]byte("1\n")); err != nil {
			t.Fatalf("tiny frame %d of %d: %v", i+1, n, err)
		}
	}
	if err := w.Frame([]byte("1\n")); !errors.Is(err, broker.ErrAnswerTooLarge) {
		t.Fatalf("tiny frame %d (%d bytes in all): %v, want ErrAnswerTooLarge", n+1, 2*(n+1), err)
	}
	if len(w.Frames()) != n {
		t.Errorf("%d frames kept, want %d", len(w.Frames()), n)
	}
}
