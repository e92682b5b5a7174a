package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// freedKeyBody is the request the tests below send with one Idempotency-Key.
const freedKeyBody = `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`

// A request whose Idempotency-Key another request holds waits for that request's job.
// When that submit fails instead (its program over its limit here, refused before any
// write; a full queue or a store that refuses writes alike) and frees the key, the
// waiting request takes the key and submits itself at once, as a fresh request would:
// room having appeared meanwhile, it gets a job of its own, which a retry then gets back.
// It used to wait for a job that would never come until its own deadline, and answer 409.
func TestIdempotencyKeyFreedByAFailedSubmitIsTakenAtOnce(t *testing.T) {
	t.Parallel()
	for _, via := range []string{"http", "nats"} {
		t.Run(via, func(t *testing.T) {
			t.Parallel()
			b, submit := newFreedKeyBundle(t, via, true)
			ctx := testCtx(t, 30*time.Second)
			filler := jobsSubmit(t, b, `{"model":"tiny-a","messages":[]}`) // the program's limit
			hold := holdSubmits(t, b, 2)
			firstC, secondC := make(chan keyedAnswer, 1), make(chan keyedAnswer, 1)
			go func() { firstC <- submit(ctx, freedKeyBody, "k1") }()
			first := hold.next(t, ctx, "the first request never claimed its key")
			waiting := recordReads(t, b, first)
			go func() { secondC <- submit(ctx, freedKeyBody, "k1") }()
			select {
			case <-waiting:
			case <-ctx.Done():
				t.Fatal("the second request never waited for the first one's job")
			}
			<-time.After(50 * time.Millisecond) // the second request waits a while
			hold.proceed()
			if a := <-firstC; a.status != http.StatusTooManyRequests {
				t.Fatalf("first request over its program's limit: %s, want 429", a)
			}
			var second string
			select {
			case second = <-hold.entered:
			case a := <-secondC:
				t.Fatalf("second request: %s, without taking the key its first request freed", a)
			case <-ctx.Done():
				t.Fatal("the second request never took the key its first request freed")
			}
			if second == first {
				t.Fatalf("the second request submits the first one's job %s", first)
			}
			// Its claim is live for the time its request has left, less what it waited:
			// not the whole of it again (ADR-0060).
			c, err := b.Broker.Store.IdempotencyKeyClaim(ctx, scopedIdempotencyKey("", "k1"))
			if err != nil || c.JobID != second {
				t.Fatalf("the second request's claim: %+v, %v", c, err)
			}
			if left := 5*time.Second - 50*time.Millisecond; c.Within <= 0 || c.Within >= left {
				t.Fatalf("the second request's claim, made after it waited %v or more, is live for %v more: want less than %v", 50*time.Millisecond, c.Within, left)
			}
			// Room appears before the second request writes its job.
			if _, err := b.Broker.Store.Cancel(ctx, filler, ""); err != nil {
				t.Fatal(err)
			}
			hold.proceed()
			if a := <-secondC; a.status != http.StatusAccepted || a.id != second {
				t.Fatalf("second request: %s, want 202 with its own job %s", a, second)
			}
			if a := submit(ctx, freedKeyBody, "k1"); a.status != http.StatusAccepted || a.id != second {
				t.Fatalf("retry: %s, want the job %s", a, second)
			}
		})
	}
}

// Requests with one key sent together while no job can be queued are each refused as a
// fresh request would be, one after another as the key passes from each failed submit to
// the next request: none waits out its deadline to answer 409, and no job is made. Over
// its program's limit a submit fails before it writes anything, so a waiting request
// never sees a record. On a full queue a record stands for a moment before it is taken
// back; a waiting request that reads it in that moment moves on through its replay.
func TestIdempotencyKeyRequestsTogetherWithNoRoom(t *testing.T) {
	t.Parallel()
	for _, via := range []string{"http", "nats"} {
		for _, c := range []struct {
			name       string
			perProgram bool
			status     int
		}{
			{"program-limit", true, http.StatusTooManyRequests},
			{"queue-full", false, http.StatusServiceUnavailable},
		} {
			t.Run(via+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				b, submit := newFreedKeyBundle(t, via, c.perProgram)
				ctx := testCtx(t, 30*time.Second)
				jobsSubmit(t, b, `{"model":"tiny-a","messages":[]}`) // no room left
				hold := holdSubmits(t, b, 1)
				const n = 6
				answers := make(chan keyedAnswer, n)
				go func() { answers <- submit(ctx, freedKeyBody, "k1") }()
				first := hold.next(t, ctx, "no request claimed the key")
				waiting := recordReads(t, b, first)
				for range n - 1 {
					go func() { answers <- submit(ctx, freedKeyBody, "k1") }()
				}
				select {
				case <-waiting:
				case <-ctx.Done():
					t.Fatal("no request waited for the first one's job")
				}
				hold.proceed()
				for range n {
					select {
					case a := <-answers:
						if a.status != c.status {
							t.Errorf("same-key request: %s, want %d", a, c.status)
						}
					case <-ctx.Done():
						t.Fatal("not every request was answered")
					}
				}
				if q, err := b.Broker.Store.QueueLen(ctx); err != nil || q != 1 {
					t.Fatalf("queue holds %d jobs (%v), want the one that filled it", q, err)
				}
			})
		}
	}
}

// newFreedKeyBundle is a test bundle that queues one job: one of each program's when
// perProgram (FOREMAN_MAX_QUEUE_PER_PROGRAM), else one in all (FOREMAN_MAX_QUEUE). Its
// submits are bounded to 5 s (the defaults are 10 s over HTTP and 30 s over NATS), so
// that a request that waits out its deadline shows soon; via "nats" it answers NATS
// submits. submit sends a job request with an Idempotency-Key by via.
func newFreedKeyBundle(t *testing.T, via string, perProgram bool) (b *testBundle, submit func(ctx context.Context, body, key string) keyedAnswer) {
	t.Helper()
	b = newTestBundle(t,
		withBroker(brokertest.WithStore(func(c *broker.Config) {
			if !perProgram {
				c.MaxQueue = 1
			}
		})),
		withGateway(func(c *Config) {
			if perProgram {
				c.MaxQueuePerProgram = 1
			}
			c.submitWait, c.natsSubmitWait = 5*time.Second, 5*time.Second
		}))
	if via == "nats" {
		runNATSSubmit(t, b)
		return b, func(ctx context.Context, body, key string) keyedAnswer { return natsKeyedSubmit(ctx, b, body, key) }
	}
	return b, func(ctx context.Context, body, key string) keyedAnswer { return httpKeyedSubmit(ctx, b, body, key) }
}

// keyedAnswer is the answer to one job request: its status (202 with a job) and job id,
// or its error.
type keyedAnswer struct {
	status int
	id     string
	msg    string
	err    error
}

func (a keyedAnswer) String() string {
	if a.err != nil {
		return a.err.Error()
	}
	return fmt.Sprintf("%d %q %s", a.status, a.id, a.msg)
}

// httpKeyedSubmit posts body to /jobs with an Idempotency-Key; it fails no test, so any
// goroutine may call it.
func httpKeyedSubmit(ctx context.Context, b *testBundle, body, key string) keyedAnswer {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.URL+"/jobs", strings.NewReader(body))
	if err != nil {
		return keyedAnswer{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return keyedAnswer{err: err}
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return keyedAnswer{err: err}
	}
	var s submitted
	_ = json.Unmarshal(out, &s)
	return keyedAnswer{status: resp.StatusCode, id: s.JobID, msg: string(bytes.TrimSpace(out))}
}

// natsKeyedSubmit sends body on foreman.jobs.submit with an Idempotency-Key; it fails no
// test, so any goroutine may call it.
func natsKeyedSubmit(ctx context.Context, b *testBundle, body, key string) keyedAnswer {
	m := natsMsg(broker.SubmitSubject, body, "Idempotency-Key", key)
	for {
		got, err := b.Broker.Conn.RequestMsgWithContext(ctx, m)
		if errors.Is(err, nats.ErrNoResponders) {
			continue // the responder is still subscribing
		}
		if err != nil {
			return keyedAnswer{err: err}
		}
		var r submitReply
		if err := json.Unmarshal(got.Data, &r); err != nil {
			return keyedAnswer{err: fmt.Errorf("reply %.200s", got.Data)}
		}
		if r.JobID != "" {
			return keyedAnswer{status: http.StatusAccepted, id: r.JobID}
		}
		return keyedAnswer{status: r.Status, msg: r.Error}
	}
}

// submitHold stops each of the first submits that claim an idempotency key, before it
// writes its job, until the test lets it go on; later submits go on at once.
type submitHold struct {
	entered chan string // the job of each submit stopped
	goOn    chan struct{}
}

// holdSubmits stops the first of b's submits that claim a key; none is left stopped once
// the test ends.
func holdSubmits(t *testing.T, b *testBundle, first int64) *submitHold {
	t.Helper()
	h := &submitHold{entered: make(chan string), goOn: make(chan struct{})}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) }) // before the server stops: it waits for its requests
	var n atomic.Int64
	b.GW.beforeSubmit = func(id string) {
		if n.Add(1) > first {
			return
		}
		select {
		case h.entered <- id:
		case <-stop:
			return
		}
		select {
		case <-h.goOn:
		case <-stop:
		}
	}
	return h
}

// next is the job of the next submit stopped.
func (h *submitHold) next(t *testing.T, ctx context.Context, what string) string {
	t.Helper()
	select {
	case id := <-h.entered:
		return id
	case <-ctx.Done():
		t.Fatal(what)
		return ""
	}
}

// proceed lets the submit stopped go on.
func (h *submitHold) proceed() { h.goOn <- struct{}{} }

// recordReads signals reads of job id's record from the store. Before the job is
// written, the one reader is a request waiting for it under the key it claimed.
func recordReads(t *testing.T, b *testBundle, id string) <-chan struct{} {
	t.Helper()
	nc, err := b.Broker.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	reads := make(chan struct{}, 1)
	key := []byte("job." + id)
	read := func(m *nats.Msg) {
		if bytes.HasSuffix([]byte(m.Subject), key) || bytes.Contains(m.Data, key) {
			select {
			case reads <- struct{}{}:
			default:
			}
		}
	}
	// A read is a direct get naming the key in its subject, or one asking the stream's
	// leader for it in its request (a store that may be replicated).
	for _, subj := range []string{"$JS.API.DIRECT.GET.KV_" + broker.JobsBucket + ".>", "$JS.API.STREAM.MSG.GET.KV_" + broker.JobsBucket} {
		if _, err := nc.Subscribe(subj, read); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return reads
}
