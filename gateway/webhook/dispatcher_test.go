package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

const testSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// hit is one request a receiver got.
type hit struct {
	header http.Header
	body   []byte
	job    *broker.Job
}

// receiver is a webhook endpoint; reply chooses each answer's status (default 200).
type receiver struct {
	*httptest.Server
	hits  chan hit
	mu    sync.Mutex
	reply func(n int, h hit) int
	n     int
	lost  int // requests beyond the unread hits the channel holds: a flood
}

func newReceiver(t *testing.T, reply func(n int, h hit) int) *receiver {
	t.Helper()
	r := &receiver{hits: make(chan hit, 100), reply: reply}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		h := hit{header: req.Header.Clone(), body: body}
		h.job, _ = broker.DecodeJob(body)
		r.mu.Lock()
		r.n++
		n, fn := r.n, r.reply
		r.mu.Unlock()
		status := http.StatusOK
		if fn != nil {
			status = fn(n, h)
		}
		w.WriteHeader(status)
		select {
		case r.hits <- h:
		default:
			// A flood (a dispatcher sending again and again) fails the test instead of
			// blocking this handler, which would hang the server's Close to the timeout.
			r.mu.Lock()
			r.lost++
			r.mu.Unlock()
		}
	}))
	t.Cleanup(func() {
		r.Close()
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.lost > 0 {
			t.Errorf("webhook receiver flooded: %d requests past %d unread", r.lost, cap(r.hits))
		}
	})
	return r
}

// next waits for the next request.
func (r *receiver) next(t *testing.T) hit {
	t.Helper()
	select {
	case h := <-r.hits:
		return h
	case <-time.After(15 * time.Second):
		t.Fatal("no webhook arrived")
		return hit{}
	}
}

// fastConfig retries quickly and opens loopback (FOREMAN_WEBHOOK_ALLOW_NETS), where the
// test receivers listen.
func fastConfig(st *broker.Store) Config {
	return Config{Store: st, Secret: testSecret, BaseDelay: 10 * time.Millisecond, MaxDelay: 200 * time.Millisecond, AckWait: 3 * time.Second,
		Policy: Policy{AllowNets: loopbackNets}}
}

var loopbackNets = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// runDispatcher runs a dispatcher until the returned stop is called (or the test ends).
func runDispatcher(t *testing.T, cfg Config) (stop func()) {
	t.Helper()
	_, stop = startDispatcher(t, cfg)
	return stop
}

// startDispatcher is runDispatcher, with the dispatcher for a test to look into.
func startDispatcher(t *testing.T, cfg Config) (d *Dispatcher, stop func()) {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return d, stop
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func submit(t *testing.T, st *broker.Store, j *broker.Job) *broker.Job {
	t.Helper()
	if j.Model == "" {
		j.Model = "tiny-a"
	}
	if j.Kind == "" {
		j.Kind = broker.KindChat
	}
	out, err := st.Submit(ctxT(t), j, []byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func setState(t *testing.T, st *broker.Store, id string, s broker.State) {
	t.Helper()
	if _, _, err := st.Modify(ctxT(t), id, func(j *broker.Job) error { j.State = s; return nil }); err != nil {
		t.Fatal(err)
	}
}

func verify(t *testing.T, h hit) {
	t.Helper()
	wh, _ := standardwebhooks.NewWebhook(testSecret)
	if err := wh.Verify(h.body, h.header); err != nil {
		t.Fatalf("standard webhooks library rejects the delivery: %v", err)
	}
	if err := Verify(testSecret, h.header, h.body, 0); err != nil {
		t.Fatalf("Verify rejects the delivery: %v", err)
	}
	// X-Foreman-Signature: the hex HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>".
	key, _ := Key(testSecret)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(h.header.Get(HeaderID) + "." + h.header.Get(HeaderTimestamp) + "."))
	m.Write(h.body)
	if got, want := h.header.Get(HeaderForeman), "sha256="+hex.EncodeToString(m.Sum(nil)); got != want {
		t.Fatalf("X-Foreman-Signature %q, want %q", got, want)
	}
	foremanOnly := h.header.Clone()
	foremanOnly.Del(HeaderSignature)
	if err := Verify(testSecret, foremanOnly, h.body, 0); err != nil {
		t.Fatalf("Verify rejects the delivery's X-Foreman-Signature: %v", err)
	}
}

func TestDeliversEveryStateInOrderSigned(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	runDispatcher(t, fastConfig(b.Store))

	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL + "/hook"}})
	setState(t, b.Store, j.ID, broker.StateWorking)
	setState(t, b.Store, j.ID, broker.StateDone)

	ids := map[string]bool{}
	for _, want := range []broker.State{broker.StateQueued, broker.StateWorking, broker.StateDone} {
		h := rcv.next(t)
		verify(t, h)
		if h.job == nil || h.job.ID != j.ID || h.job.State != want {
			t.Fatalf("got event %s, want %s of job %s", h.body, want, j.ID)
		}
		id := h.header.Get(HeaderID)
		if ids[id] {
			t.Fatalf("webhook-id %s repeated for a different event", id)
		}
		ids[id] = true
		// The body is the record exactly as stored (and re-published).
		e, err := b.JobRecords(t).GetRevision(ctxT(t), "job."+j.ID, revOf(t, id))
		if err != nil {
			t.Fatal(err)
		}
		if string(e.Value()) != string(h.body) {
			t.Fatalf("body differs from the KV value:\n%s\n%s", h.body, e.Value())
		}
	}
	waitLog(t, b.Store, j.ID, func(log []broker.DeliveryAttempt) bool {
		return len(log) == 3 && log[2].State == broker.StateDone && log[2].Outcome == broker.OutcomeDelivered && log[2].Status == 200
	})
}

func revOf(t *testing.T, webhookID string) uint64 {
	t.Helper()
	var rev uint64
	for i := len(webhookID) - 1; i >= 0; i-- {
		if webhookID[i] == '-' {
			for _, c := range webhookID[i+1:] {
				rev = rev*10 + uint64(c-'0')
			}
			return rev
		}
	}
	t.Fatalf("webhook-id %q has no revision", webhookID)
	return 0
}

// waitLog polls the delivery log until ok or a deadline.
func waitLog(t *testing.T, st *broker.Store, id string, ok func([]broker.DeliveryAttempt) bool) []broker.DeliveryAttempt {
	t.Helper()
	var log []broker.DeliveryAttempt
	eventually(t, 15*time.Second, "delivery log matches", func() bool {
		var err error
		if log, err = st.Deliveries(ctxT(t), id); err != nil {
			t.Fatal(err)
		}
		return ok(log)
	})
	return log
}

func TestSkipsSyncUnwantedAndDeleted(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)

	// Written before the dispatcher starts; it reads the stream from the start.
	syncJob := submit(t, b.Store, &broker.Job{Sync: true, Webhook: &broker.Webhook{URL: rcv.URL}})
	setState(t, b.Store, syncJob.ID, broker.StateWorking)
	setState(t, b.Store, syncJob.ID, broker.StateDone)
	plain := submit(t, b.Store, &broker.Job{})
	setState(t, b.Store, plain.ID, broker.StateWorking)
	deleted := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL, Events: []broker.State{broker.StateDone}}})
	if err := b.JobRecords(t).Delete(ctxT(t), "job."+deleted.ID); err != nil {
		t.Fatal(err)
	}
	filtered := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL, Events: []broker.State{broker.StateDone}}})
	setState(t, b.Store, filtered.ID, broker.StateWorking)
	setState(t, b.Store, filtered.ID, broker.StateDone)

	runDispatcher(t, fastConfig(b.Store))
	h := rcv.next(t)
	if h.job.ID != filtered.ID || h.job.State != broker.StateDone {
		t.Fatalf("first delivery %s, want done of the filtered job", h.body)
	}
	noMoreDeliveries(t, b, rcv)
}

// noMoreDeliveries fails t if rcv gets a delivery once every event is posted. Events are
// acked once stored as pending deliveries, before their lanes post them: an idle consumer
// and no pending delivery left mean every post has been made.
func noMoreDeliveries(t *testing.T, b *brokertest.Bundle, rcv *receiver) {
	t.Helper()
	waitConsumerIdle(t, b)
	waitNoPending(t, b.Store)
	select {
	case h := <-rcv.hits:
		t.Fatalf("unexpected delivery %s", h.body)
	default:
	}
}

// waitNoPending waits until no pending delivery is stored: each was posted for the last
// time (or dropped) and removed.
func waitNoPending(t *testing.T, st *broker.Store) {
	t.Helper()
	eventually(t, 15*time.Second, "pending webhook deliveries gone", func() bool {
		p, err := st.PendingDeliveries(ctxT(t))
		return err == nil && len(p) == 0
	})
}

func waitConsumerIdle(t *testing.T, b *brokertest.Bundle) {
	t.Helper()
	eventually(t, 15*time.Second, "webhook consumer idle", func() bool {
		c, err := b.JetStream(t).Consumer(ctxT(t), "KV_"+broker.JobsBucket, "webhooks")
		if err != nil {
			return false
		}
		info, err := c.Info(ctxT(t))
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0
	})
}

func TestRetriesWithTheSameWebhookID(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, func(n int, _ hit) int {
		if n == 1 {
			return http.StatusInternalServerError
		}
		return http.StatusNoContent
	})
	runDispatcher(t, fastConfig(b.Store))
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL, Events: []broker.State{broker.StateQueued}}})

	first, second := rcv.next(t), rcv.next(t)
	verify(t, first)
	verify(t, second)
	if a, b := first.header.Get(HeaderID), second.header.Get(HeaderID); a == "" || a != b {
		t.Fatalf("retry changed webhook-id: %q then %q", a, b)
	}
	if string(first.body) != string(second.body) {
		t.Fatal("retry changed the body")
	}
	log := waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool { return len(l) == 2 })
	if log[0].Outcome != broker.OutcomeRetry || log[0].Status != 500 || log[0].Attempt != 1 ||
		log[1].Outcome != broker.OutcomeDelivered || log[1].Status != 204 || log[1].Attempt != 2 {
		t.Fatalf("delivery log %+v", log)
	}
}

func TestGivesUpAfterAttemptsAndStopsOn410(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	failing := newReceiver(t, func(int, hit) int { return http.StatusBadGateway })
	gone := newReceiver(t, func(int, hit) int { return http.StatusGone })
	cfg := fastConfig(b.Store)
	cfg.Attempts = 3
	runDispatcher(t, cfg)

	fj := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: failing.URL, Events: []broker.State{broker.StateQueued}}})
	gj := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: gone.URL}})
	setState(t, b.Store, gj.ID, broker.StateWorking)
	setState(t, b.Store, gj.ID, broker.StateDone)

	log := waitLog(t, b.Store, fj.ID, func(l []broker.DeliveryAttempt) bool { return len(l) == 3 })
	if log[2].Outcome != broker.OutcomeFailed || log[2].Attempt != 3 {
		t.Fatalf("last attempt %+v, want failed #3", log[2])
	}
	waitLog(t, b.Store, gj.ID, func(l []broker.DeliveryAttempt) bool { return len(l) >= 1 })
	waitConsumerIdle(t, b)
	glog, _ := b.Store.Deliveries(ctxT(t), gj.ID)
	if len(glog) != 1 || glog[0].Outcome != broker.OutcomeGone {
		t.Fatalf("after a 410 the job's later events were still sent: %+v", glog)
	}
	if n := len(gone.hits); n != 1 {
		t.Fatalf("the 410 receiver got %d requests, want 1", n)
	}
	// The job itself is untouched by the failures (ADR-0005).
	got, _, _ := b.Store.Get(ctxT(t), fj.ID)
	if got.State != broker.StateQueued || got.Error != "" {
		t.Fatalf("webhook failure changed the job: %+v", got)
	}
}

func TestSlowReceiverDoesNotBlockOtherJobs(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	release := make(chan struct{})
	slow := newReceiver(t, func(int, hit) int { <-release; return 200 })
	t.Cleanup(func() { close(release) })
	fast := newReceiver(t, nil)
	runDispatcher(t, fastConfig(b.Store))

	submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: slow.URL}})
	fj := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: fast.URL}})
	setState(t, b.Store, fj.ID, broker.StateCanceled)
	if h := fast.next(t); h.job.State != broker.StateQueued {
		t.Fatalf("got %s", h.body)
	}
	if h := fast.next(t); h.job.State != broker.StateCanceled {
		t.Fatalf("got %s", h.body)
	}
}

func TestDoneEventSurvivesRestart(t *testing.T) {
	t.Parallel()
	// The embedded server's store: the restarted foreman takes every pending delivery
	// at once (on a shared NATS, once the stopped one's presence lapsed).
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.Exclusive = true }))
	var mu sync.Mutex
	down := true
	rcv := newReceiver(t, func(_ int, h hit) int {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	cfg := fastConfig(b.Store)
	cfg.Attempts = 1000 // still retrying when foreman stops
	stop := runDispatcher(t, cfg)
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL, Events: []broker.State{broker.StateDone}}})
	setState(t, b.Store, j.ID, broker.StateWorking)
	setState(t, b.Store, j.ID, broker.StateDone)
	failed := rcv.next(t)
	if failed.job.State != broker.StateDone {
		t.Fatalf("got %s", failed.body)
	}
	waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool { return len(l) > 0 })
	stop()
	// The event's message is acked: its retries live in the store, not in JetStream.
	waitConsumerIdle(t, b)
	b.Restart(t)
	mu.Lock()
	down = false
	mu.Unlock()
	for len(rcv.hits) > 0 { // attempts made while stopping
		<-rcv.hits
	}
	cfg.Store = b.Store
	runDispatcher(t, cfg)
	h := rcv.next(t)
	if h.header.Get(HeaderID) != failed.header.Get(HeaderID) {
		t.Fatalf("after the restart webhook-id %q, before %q", h.header.Get(HeaderID), failed.header.Get(HeaderID))
	}
	verify(t, h)
	log := waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool {
		return len(l) > 0 && l[len(l)-1].Outcome == broker.OutcomeDelivered
	})
	if n := len(log); n < 2 || log[n-1].Attempt <= log[n-2].Attempt {
		t.Fatalf("attempts did not continue across the restart: %+v", log)
	}
}

func TestRedeliverRequest(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	runDispatcher(t, fastConfig(b.Store))
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL, Events: []broker.State{broker.StateDone}}})
	setState(t, b.Store, j.ID, broker.StateWorking)
	setState(t, b.Store, j.ID, broker.StateDone)
	orig := rcv.next(t)

	msg, err := b.Conn.RequestWithContext(ctxT(t), broker.RedeliverSubject, []byte(j.ID))
	if err != nil {
		t.Fatal(err)
	}
	var reply map[string]string
	_ = json.Unmarshal(msg.Data, &reply)
	if reply["webhook_id"] != orig.header.Get(HeaderID) {
		t.Fatalf("reply %s, want webhook_id %s", msg.Data, orig.header.Get(HeaderID))
	}
	again := rcv.next(t)
	if again.header.Get(HeaderID) != orig.header.Get(HeaderID) || string(again.body) != string(orig.body) {
		t.Fatalf("redelivery differs: %s %s", again.header.Get(HeaderID), again.body)
	}
	waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool { return len(l) == 2 && l[1].Manual })

	plain := submit(t, b.Store, &broker.Job{})
	msg, err = b.Conn.RequestWithContext(ctxT(t), broker.RedeliverSubject, []byte(plain.ID))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply["error"] == "" {
		t.Fatalf("redeliver of a job without webhook: %s", msg.Data)
	}
	// A sync job's webhook is never sent (ADR-0014), nor sent again.
	syncJob := submit(t, b.Store, &broker.Job{Sync: true, Webhook: &broker.Webhook{URL: rcv.URL}})
	if r := redeliver(t, b, syncJob.ID); r.Error != "job has no webhook" || r.WebhookID != "" {
		t.Fatalf("redeliver of a sync job: %+v, want it refused", r)
	}
	noMoreDeliveries(t, b, rcv)
}

// redeliver asks the dispatcher to send job id's latest event again.
// A dispatcher just started may not answer yet (it subscribes for redeliveries once its
// consumer runs): a request it cannot have heard is asked again.
func redeliver(t *testing.T, b *brokertest.Bundle, id string) broker.RedeliverReply {
	t.Helper()
	var (
		reply broker.RedeliverReply
		err   error
	)
	eventually(t, 15*time.Second, "the dispatcher answering a redelivery", func() bool {
		reply, err = b.Store.Redeliver(ctxT(t), id)
		return !errors.Is(err, broker.ErrNoDispatcher)
	})
	if err != nil {
		t.Fatal(err)
	}
	return reply
}

// TestRedeliverWhilePendingIsRefused: while a job's manual redelivery waits (here behind
// an attempt its receiver hangs on), a further request is refused, naming the pending
// one, instead of queueing the record again: requests in a loop cannot pile up events in
// memory. Once the pending one is delivered, the job may be redelivered again.
func TestRedeliverWhilePendingIsRefused(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	release := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	rcv := newReceiver(t, func(n int, _ hit) int {
		if n == 1 {
			<-release
		}
		return http.StatusOK
	})
	t.Cleanup(open) // before the receiver closes, which waits for its handlers
	cfg := fastConfig(b.Store)
	cfg.Timeout = time.Minute
	runDispatcher(t, cfg)
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL, Events: []broker.State{broker.StateQueued}}})
	waitConsumerIdle(t, b) // the queued event is taken: its attempt hangs

	first := redeliver(t, b, j.ID)
	if first.Error != "" || first.WebhookID == "" {
		t.Fatalf("first redeliver: %+v", first)
	}
	for range 3 {
		again := redeliver(t, b, j.ID)
		if again.Error == "" || !strings.Contains(again.Error, "already pending") || !strings.Contains(again.Error, first.WebhookID) {
			t.Fatalf("redeliver while one is pending: %+v, want it refused", again)
		}
	}
	open()
	rcv.next(t) // the automatic attempt
	if h := rcv.next(t); h.header.Get(HeaderID) != first.WebhookID {
		t.Fatalf("redelivered %s, want %s", h.header.Get(HeaderID), first.WebhookID)
	}
	waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool { return len(l) == 2 && l[1].Manual })
	if r := redeliver(t, b, j.ID); r.Error != "" || r.WebhookID != first.WebhookID {
		t.Fatalf("redeliver after the pending one was delivered: %+v", r)
	}
	if h := rcv.next(t); h.header.Get(HeaderID) != first.WebhookID {
		t.Fatalf("redelivered %s, want %s", h.header.Get(HeaderID), first.WebhookID)
	}
	waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool { return len(l) == 3 })
	if n := len(rcv.hits); n != 0 {
		t.Fatalf("%d more requests than the three accepted events", n)
	}
}

// TestThrottlingReceiverDoesNotHoldOthers: receiver A answers every event 503 with
// Retry-After: 300, for more events than the consumer may hold; receiver B's event,
// written after all of them, is still delivered at once, and no JetStream message waits
// for A's retries (ADR-0022).
func TestThrottlingReceiverDoesNotHoldOthers(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	throttled := make(chan string, 100)
	a := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		throttled <- r.Header.Get(HeaderID)
		w.Header().Set("Retry-After", "300")
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(a.Close)
	rcvB := newReceiver(t, nil)
	cfg := fastConfig(b.Store)
	cfg.MaxPending = 4
	cfg.MaxDelay = time.Hour // Retry-After: 300 is honoured
	runDispatcher(t, cfg)

	const n = 12 // three times what the consumer may hold un-acked
	var aJobs []string
	for range n {
		j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: a.URL, Events: []broker.State{broker.StateQueued}}})
		aJobs = append(aJobs, j.ID)
	}
	bj := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcvB.URL}})
	if h := rcvB.next(t); h.job.ID != bj.ID {
		t.Fatalf("B got %s", h.body)
	}
	for _, id := range aJobs {
		log := waitLog(t, b.Store, id, func(l []broker.DeliveryAttempt) bool { return len(l) > 0 })
		if log[0].Outcome != broker.OutcomeRetry || log[0].Status != http.StatusServiceUnavailable {
			t.Fatalf("A's job %s: delivery log %+v", id, log)
		}
	}
	// Every event is acked while A's retries wait.
	waitConsumerIdle(t, b)
	if got := len(throttled); got != n {
		t.Fatalf("A got %d requests, want %d: one each, the retries waiting 300s", got, n)
	}
}

// TestHangingReceiverGetsBoundedAttempts: a receiver that never answers gets at most
// PerReceiver attempts at once, however many jobs name it, and another receiver is not
// kept waiting.
func TestHangingReceiverGetsBoundedAttempts(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	var (
		mu             sync.Mutex
		inFlight, most int
	)
	release := make(chan struct{})
	arrived := make(chan struct{}, 100)
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inFlight++
		most = max(most, inFlight)
		mu.Unlock()
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		mu.Lock()
		inFlight--
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(hang.Close)
	t.Cleanup(func() { close(release) })
	other := newReceiver(t, nil)
	cfg := fastConfig(b.Store)
	cfg.PerReceiver = 2
	cfg.Timeout = time.Minute
	runDispatcher(t, cfg)

	const n = 8
	for range n {
		submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: hang.URL + "/h", Events: []broker.State{broker.StateQueued}}})
	}
	for range cfg.PerReceiver {
		select {
		case <-arrived:
		case <-time.After(15 * time.Second):
			t.Fatal("the hanging receiver got no request")
		}
	}
	oj := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: other.URL}})
	if h := other.next(t); h.job.ID != oj.ID {
		t.Fatalf("other receiver got %s", h.body)
	}
	// Every event of the hanging receiver is taken (acked) and waits in its lane.
	waitConsumerIdle(t, b)
	mu.Lock()
	defer mu.Unlock()
	if most != cfg.PerReceiver || len(arrived) != 0 {
		t.Fatalf("the hanging receiver had %d requests at once (%d more arrived), want at most %d", most, len(arrived), cfg.PerReceiver)
	}
}

// A long job's record is refreshed (broker.Store.Refresh) with the same state: no
// webhook reports it again.
func TestRefreshSendsNoWebhook(t *testing.T) {
	t.Parallel()
	var ahead atomic.Int64 // the store's clock, moved on to make the record due for a refresh
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) {
		c.Now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	}))
	rcv := newReceiver(t, nil)
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL}})
	setState(t, b.Store, j.ID, broker.StateWorking)
	runDispatcher(t, fastConfig(b.Store))
	for _, want := range []broker.State{broker.StateQueued, broker.StateWorking} {
		if h := rcv.next(t); h.job.State != want {
			t.Fatalf("delivery %s, want %s", h.job.State, want)
		}
	}
	ahead.Store(int64(b.Store.Config().JobTTL))
	if ok, err := b.Store.Refresh(ctxT(t), j.ID); err != nil || !ok {
		t.Fatalf("refresh: %v %v", ok, err)
	}
	setState(t, b.Store, j.ID, broker.StateDone)
	if h := rcv.next(t); h.job.State != broker.StateDone {
		t.Fatalf("delivery %s after the refresh, want done", h.job.State)
	}
	noMoreDeliveries(t, b, rcv)
}

// eventually checks cond at once and then every 10ms until it holds; it fails t with
// what if within passes first. cond runs on the test's goroutine and may call t.Fatal.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(within)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("%s: not within %v", what, within)
		}
	}
}

// steadily waits until count reaches want, failing once it has not grown for idle: a
// long workload, which a loaded machine works through at a fraction of its usual pace,
// is waited for as long as it moves, and one that stops (a lost wake-up) still fails.
func steadily(t testing.TB, idle time.Duration, what string, want int, count func() int) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	last, moved := count(), time.Now()
	for last < want {
		<-tick.C
		switch n := count(); {
		case n != last:
			last, moved = n, time.Now()
		case time.Since(moved) > idle:
			t.Fatalf("%s: %d of %d, and none more for %v", what, last, want, idle)
		}
	}
}

// A write that keeps the state (a cancel requested of a running job, an artifact added)
// is no state change: no webhook reports it. A new attempt in the same state (a run
// taken over after a crash) is one.
func TestSameStateWriteSendsNoWebhook(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	runDispatcher(t, fastConfig(b.Store))
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL}})
	setState(t, b.Store, j.ID, broker.StateWorking)
	if _, err := b.Store.Cancel(ctxT(t), j.ID, "stop"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Store.PutArtifact(ctxT(t), j.ID, "notes.txt", "text/plain", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Store.Modify(ctxT(t), j.ID, func(j *broker.Job) error { j.Attempt++; return nil }); err != nil {
		t.Fatal(err)
	}
	setState(t, b.Store, j.ID, broker.StateCanceled)
	for i, want := range []broker.State{broker.StateQueued, broker.StateWorking, broker.StateWorking, broker.StateCanceled} {
		h := rcv.next(t)
		if h.job.State != want {
			t.Fatalf("delivery %d: %s, want %s", i+1, h.job.State, want)
		}
		if i == 2 && (h.job.Attempt != j.Attempt+1 || h.job.CancelRequested == "") {
			t.Fatalf("delivery 3 is not the new attempt's: %s", h.body)
		}
	}
	noMoreDeliveries(t, b, rcv)
}

// A manual redelivery sends the newest event the job's webhook_events want, with the
// webhook-id it went out under: not a state the filter leaves out, nor a later write no
// webhook reported (an artifact added). With no such event there is nothing to send
// again, and the request is refused saying so.
func TestRedeliverSendsTheEventTheFilterWants(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	runDispatcher(t, fastConfig(b.Store))
	onlyDone := &broker.Webhook{URL: rcv.URL, Events: []broker.State{broker.StateDone}}

	j := submit(t, b.Store, &broker.Job{Webhook: onlyDone})
	setState(t, b.Store, j.ID, broker.StateWorking)
	setState(t, b.Store, j.ID, broker.StateDone)
	done := rcv.next(t)
	if _, err := b.Store.PutArtifact(ctxT(t), j.ID, "notes.txt", "text/plain", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if r := redeliver(t, b, j.ID); r.Error != "" || r.WebhookID != done.header.Get(HeaderID) || r.State != string(broker.StateDone) {
		t.Fatalf("redeliver after an artifact was added: %+v, want the done event %s", r, done.header.Get(HeaderID))
	}
	if h := rcv.next(t); h.header.Get(HeaderID) != done.header.Get(HeaderID) || string(h.body) != string(done.body) {
		t.Fatalf("redelivered %s %s, want the done event %s %s", h.header.Get(HeaderID), h.body, done.header.Get(HeaderID), done.body)
	}

	working := submit(t, b.Store, &broker.Job{Webhook: onlyDone})
	setState(t, b.Store, working.ID, broker.StateWorking)
	r := redeliver(t, b, working.ID)
	if r.WebhookID != "" || !strings.Contains(r.Error, "no state event its webhook_events want (done)") || !strings.Contains(r.Error, "it is working") {
		t.Fatalf("redeliver of a job with no event its filter wants: %+v, want it refused", r)
	}
	noMoreDeliveries(t, b, rcv)
}

// An operator lowers FOREMAN_WEBHOOK_ATTEMPTS below the attempts an event pending across
// the restart has already had: the event is given up, and its delivery log says so (its
// last entry "failed", naming the setting) instead of "retry" for an attempt that never
// comes.
func TestWebhookAttemptsLoweredAtARestartEndsTheDeliveryLog(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.Exclusive = true }))
	rcv := newReceiver(t, func(int, hit) int { return http.StatusServiceUnavailable })
	cfg := fastConfig(b.Store)
	cfg.Attempts = 1000 // still retrying when foreman stops
	stop := runDispatcher(t, cfg)
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL, Events: []broker.State{broker.StateDone}}})
	setState(t, b.Store, j.ID, broker.StateWorking)
	setState(t, b.Store, j.ID, broker.StateDone)
	waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool { return len(l) >= 3 })
	stop()
	waitConsumerIdle(t, b)
	b.Restart(t)
	before, err := b.Store.Deliveries(ctxT(t), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	made := before[len(before)-1].Attempt
	cfg.Store, cfg.Attempts = b.Store, 2
	runDispatcher(t, cfg)
	log := waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool {
		return len(l) > len(before) && l[len(l)-1].Outcome != broker.OutcomeRetry
	})
	last := log[len(log)-1]
	if last.Outcome != broker.OutcomeFailed || last.Attempt != made || !strings.Contains(last.Error, "FOREMAN_WEBHOOK_ATTEMPTS is 2") {
		t.Errorf("last entry %+v, want failed after attempt %d naming the setting", last, made)
	}
	waitNoPending(t, b.Store)
}
