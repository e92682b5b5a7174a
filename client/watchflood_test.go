package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// publishStates publishes n state events on job id's state subject (id "" gives each its
// own made-up job), working, attempts 1..n, from foreman's side of NATS with the headers
// of JetStream's republish, and flushes.
func publishStates(t *testing.T, f *foreman, id string, n int) []string {
	t.Helper()
	conn := f.Conn
	var ids []string
	for i := 1; i <= n; i++ {
		jid := id
		if jid == "" {
			jid = fmt.Sprintf("FLOOD%05d", i)
		}
		data, err := json.Marshal(broker.Job{ID: jid, State: broker.StateWorking, Model: "tiny-a:latest", Attempt: i, At: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		// As JetStream republishes a job record: only such messages are state events.
		m := nats.NewMsg(broker.StateSubject(jid))
		m.Data = data
		m.Header.Set(nats.JSStream, "KV_"+broker.JobsBucket)
		m.Header.Set(nats.JSSequence, strconv.Itoa(i))
		if err := conn.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, jid)
	}
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// flushed waits until nc has read everything the server sent it so far.
func flushed(t *testing.T, nc *nats.Conn) {
	t.Helper()
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestWatchJobSlowReader: a flood of state events while the reader is away must not push
// the job's terminal event out; the NATS watch has no brisk polling to recover it.
func TestWatchJobSlowReader(t *testing.T) {
	t.Parallel()
	last, n, werr := watchThroughFlood(t, "slow reader", 0)
	if last.State != client.StateDone {
		t.Fatalf("watch of %d events ended with %+v (context: %v); want the done event", n, last, werr)
	}
	if n < 300 {
		t.Errorf("watch delivered %d events; want the 300 published ones and the job's own", n)
	}
}

// TestWatchJobLossStillEndsDone: when nats.go drops a single-job watch's events (its
// pending buffer, here 10 messages, overflowed while the reader was away), the job's
// terminal event among them, the watch learns of the loss from the next event it takes,
// reads the job and still ends with its terminal state: none is silently missed, even
// with no polling to fall back on.
func TestWatchJobLossStillEndsDone(t *testing.T) {
	t.Parallel()
	last, n, werr := watchThroughFlood(t, "lossy reader", 10,
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})) // drops are the point
	if last.State != client.StateDone {
		t.Fatalf("watch of %d events ended with %+v (context: %v); want the done state", n, last, werr)
	}
	if n >= 300 {
		t.Errorf("watch delivered %d events; want fewer than the 300 published, some dropped", n)
	}
}

// watchThroughFlood watches a held job over NATS (no polling), publishes 300 state events
// for it while the reader is away, lets the job finish and then reads the watch to its end:
// the last event, the count, and the watch's context error. pendingLimit caps the messages
// buffered per state subscription (0: the client's default); natsOpts go to the connection.
func watchThroughFlood(t *testing.T, prompt string, pendingLimit int, natsOpts ...nats.Option) (last client.Event, n int, werr error) {
	t.Helper()
	f := startForeman(t, foremanConfig{})
	release := f.Fake.Hold("tiny-a")
	defer release()
	nc := natsConn(t, f, natsOpts...)
	c := newClient(t, f.URL, client.WithNATS(nc), client.WithPollInterval(never))
	if pendingLimit > 0 {
		client.SetStatePendingLimit(c, pendingLimit)
	}
	ctx := testCtx(t)
	id, err := c.SubmitAsync(ctx, chatJob("tiny-a", prompt))
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	events, err := c.Watch(wctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	publishStates(t, f, id, 300)
	release()
	waitState(t, c, id, client.StateDone)
	flushed(t, nc) // the done event is now buffered, or dropped when the buffer is full
	for e := range events {
		last = e
		n++
	}
	return last, n, wctx.Err()
}

// TestWatchAllSlowReader: watching every job over NATS, a reader that falls behind by
// more than any small buffer still gets every event, in order.
func TestWatchAllSlowReader(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	nc := natsConn(t, f)
	c := newClient(t, f.URL, client.WithNATS(nc), client.WithPollInterval(never))
	ctx, cancel := context.WithTimeout(testCtx(t), 15*time.Second)
	defer cancel()
	events, err := c.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	ids := publishStates(t, f, "", 300)
	flushed(t, nc)
	for i, want := range ids {
		select {
		case e := <-events:
			if e.JobID != want || e.Lost != 0 {
				t.Fatalf("event %d = %+v; want job %s", i, e, want)
			}
		case <-ctx.Done():
			t.Fatalf("got %d of %d events; the rest were dropped", i, len(ids))
		}
	}
}

// TestWatchAllReportsLoss: when nats.go itself drops events (its pending buffer, here 10
// messages, overflowed), Watch("") says how many were lost instead of hiding it.
func TestWatchAllReportsLoss(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	// The flood overflows the watch's subscription on purpose: nats.go's default handler
	// would print its slow-consumer error ("nats: slow consumer, messages dropped on
	// connection [n] for subscription on "foreman.job.*.state"") into the test output,
	// where it reads as a fault. It is counted instead; any other one fails the test.
	var slow atomic.Int64
	other := make(chan error, 1)
	nc := natsConn(t, f, nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrSlowConsumer) && sub != nil && sub.Subject == broker.StateWildcard {
			slow.Add(1)
			return
		}
		select {
		case other <- err:
		default:
		}
	}))
	c := newClient(t, f.URL, client.WithNATS(nc), client.WithPollInterval(never))
	client.SetStatePendingLimit(c, 10)
	ctx, cancel := context.WithTimeout(testCtx(t), 15*time.Second)
	defer cancel()
	events, err := c.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	const total = 200
	ids := publishStates(t, f, "", total)
	flushed(t, nc) // every message is now buffered or dropped
	delivered, lost, next := 0, 0, 0
	for delivered+lost < total {
		select {
		case e := <-events:
			if e.Lost > 0 {
				if e.JobID != "" || e.State != "" || e.Error == "" {
					t.Errorf("lost event %+v: want no job or state, and a message", e)
				}
				lost += e.Lost
				continue
			}
			// Events keep their order; only the dropped ones are missing.
			for next < len(ids) && ids[next] != e.JobID {
				next++
			}
			if next == len(ids) {
				t.Fatalf("event %+v out of order", e)
			}
			next++
			delivered++
		case <-ctx.Done():
			t.Fatalf("delivered %d, reported lost %d, of %d events", delivered, lost, total)
		}
	}
	if lost == 0 || delivered+lost != total {
		t.Fatalf("delivered %d, reported lost %d, of %d events; want some lost, all accounted for", delivered, lost, total)
	}
	// nats.go tells its handler of the drops too, on a goroutine of its own.
	eventually(t, 10*time.Second, "nats.go's slow-consumer error", func() bool { return slow.Load() > 0 })
	select {
	case err := <-other:
		t.Errorf("asynchronous NATS error: %v", err)
	default:
	}
}
