package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// requests is the number of requests r received (counted before it answers).
func (r *receiver) requests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// outcomes collects what Config.OnAttempt is told.
type outcomes struct {
	mu  sync.Mutex
	got []string
}

func (o *outcomes) add(outcome string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got = append(o.got, outcome)
}

func (o *outcomes) list() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.got)
}

// storedEvent submits a job whose webhook names url and returns its queued event: the
// record as published, and its revision.
func storedEvent(t *testing.T, b *brokertest.Bundle, url string) (*broker.Job, []byte, uint64) {
	t.Helper()
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: url}})
	data, rev, err := b.Store.GetRaw(ctxT(t), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	return j, data, rev
}

// idleDispatcher is a dispatcher that is not run: a test makes its attempts itself.
func idleDispatcher(t *testing.T, cfg Config) *Dispatcher {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// failingReads fails every read of a pending delivery, as a store that cannot answer.
type failingReads struct{ Store }

func (failingReads) PendingDelivery(context.Context, string, uint64) (*broker.PendingDelivery, error) {
	return nil, fmt.Errorf("injected: %w", broker.ErrUnavailable)
}

// An attempt of a stored event that finds nothing to send reports the event finished
// (its lane drops it) and posts nothing: its pending delivery gone, held by another
// foreman, undecodable, or naming no webhook. A read that fails leaves it for later, a
// BaseDelay from now, not at once.
func TestAttemptOfAStoredEventWithNothingToSend(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	cfg := fastConfig(b.Store)
	cfg.BaseDelay = time.Minute
	d := idleDispatcher(t, cfg)
	ctx := ctxT(t)
	attempt := func(what, jobID string, rev uint64) {
		t.Helper()
		e := &event{jobID: jobID, rev: rev, nextAt: time.Now(), receiver: receiverOf(rcv.URL)}
		if !d.attempt(ctx, e) || !e.nextAt.IsZero() {
			t.Errorf("%s: attempt reports the event not finished (next at %v)", what, e.nextAt)
		}
	}

	gone, _, goneRev := storedEvent(t, b, rcv.URL) // no pending delivery stored
	attempt("no pending delivery", gone.ID, goneRev)

	held, data, heldRev := storedEvent(t, b, rcv.URL)
	other := secondForeman(t, b)
	if _, created, err := other.AddPendingDelivery(ctx, broker.PendingDelivery{JobID: held.ID, Rev: heldRev, NextAt: time.Now().UTC(), Body: data}); err != nil || !created {
		t.Fatalf("store the other foreman's pending delivery: %v %v", created, err)
	}
	attempt("held by another foreman", held.ID, heldRev)
	if p, err := b.Store.PendingDelivery(ctx, held.ID, heldRev); err != nil || p.Owner != other.BootID() {
		t.Errorf("the other foreman's pending delivery: %+v, %v; want it left alone", p, err)
	}

	noHook := submit(t, b.Store, &broker.Job{})
	noHookData, _, err := b.Store.GetRaw(ctx, noHook.ID)
	if err != nil {
		t.Fatal(err)
	}
	for what, body := range map[string][]byte{"undecodable": []byte(`[1,2,3]`), "naming no webhook": noHookData} {
		j, _, rev := storedEvent(t, b, rcv.URL)
		if _, created, err := b.Store.AddPendingDelivery(ctx, broker.PendingDelivery{JobID: j.ID, Rev: rev, NextAt: time.Now().UTC(), Body: body}); err != nil || !created {
			t.Fatalf("store the pending delivery: %v %v", created, err)
		}
		attempt(what, j.ID, rev)
		if _, err := b.Store.PendingDelivery(ctx, j.ID, rev); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("%s: pending delivery still stored (%v), want it dropped", what, err)
		}
	}
	if n := rcv.requests(); n != 0 {
		t.Fatalf("the receiver got %d requests, want none", n)
	}

	// A read that fails: tried again a BaseDelay from now.
	cfg.Store = failingReads{b.Store}
	d = idleDispatcher(t, cfg)
	unread, _, unreadRev := storedEvent(t, b, rcv.URL)
	before := time.Now()
	e := &event{jobID: unread.ID, rev: unreadRev, nextAt: before, receiver: receiverOf(rcv.URL)}
	if d.attempt(ctx, e) {
		t.Fatal("an event whose pending delivery could not be read reported finished")
	}
	if e.nextAt.Before(before.Add(cfg.BaseDelay)) {
		t.Errorf("after a failed read the event is tried again at %v, want a BaseDelay (%v) from %v", e.nextAt, cfg.BaseDelay, before)
	}
}

// A pending delivery with no owner (stored by a foreman from before owners were) is
// delivered by the dispatcher that reads it, not left to an owner that is none.
func TestOwnerlessPendingDeliveryIsDelivered(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	d := idleDispatcher(t, fastConfig(b.Store))
	j, data, rev := storedEvent(t, b, rcv.URL)
	raw, err := json.Marshal(broker.PendingDelivery{JobID: j.ID, Rev: rev, NextAt: time.Now().UTC(), Body: data})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.JobRecords(t).Create(ctxT(t), "whq."+j.ID+"."+strconv.FormatUint(rev, 10), raw); err != nil {
		t.Fatal(err)
	}
	e := &event{jobID: j.ID, rev: rev, nextAt: time.Now(), receiver: receiverOf(rcv.URL)}
	if !d.attempt(ctxT(t), e) {
		t.Fatalf("attempt of the owner-less delivery not finished (next at %v)", e.nextAt)
	}
	if n := rcv.requests(); n != 1 {
		t.Fatalf("the receiver got %d requests, want the owner-less delivery", n)
	}
	if h := rcv.next(t); h.header.Get(HeaderID) != e.webhookID() {
		t.Fatalf("delivered %s, want %s", h.header.Get(HeaderID), e.webhookID())
	}
}

// A stored event a later event of its job went out before is finished without being
// sent, superseded (ADR-0055): recorded as such unless its own attempts had ended
// already (here failed: only the removal of its pending delivery was lost).
func TestAttemptOfASupersededEvent(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	cfg := fastConfig(b.Store)
	cfg.Attempts = 3
	d := idleDispatcher(t, cfg)
	ctx := ctxT(t)
	for _, settled := range []bool{false, true} {
		j, data, rev := storedEvent(t, b, rcv.URL)
		id := (&event{jobID: j.ID, rev: rev}).webhookID()
		later := (&event{jobID: j.ID, rev: rev + 100}).webhookID()
		var logged []broker.DeliveryAttempt
		if settled {
			logged = append(logged, broker.DeliveryAttempt{WebhookID: id, State: broker.StateQueued, Attempt: cfg.Attempts, URL: rcv.URL, Status: 500, Outcome: broker.OutcomeFailed, At: time.Now().UTC()})
		}
		logged = append(logged, broker.DeliveryAttempt{WebhookID: later, State: broker.StateWorking, Attempt: 1, URL: rcv.URL, Status: 200, Outcome: broker.OutcomeDelivered, At: time.Now().UTC()})
		for _, a := range logged {
			if err := b.Store.LogDelivery(ctx, j.ID, a); err != nil {
				t.Fatal(err)
			}
		}
		if _, created, err := b.Store.AddPendingDelivery(ctx, broker.PendingDelivery{JobID: j.ID, Rev: rev, NextAt: time.Now().UTC(), Body: data}); err != nil || !created {
			t.Fatalf("store the pending delivery: %v %v", created, err)
		}
		e := &event{jobID: j.ID, rev: rev, nextAt: time.Now(), receiver: receiverOf(rcv.URL)}
		if !d.attempt(ctx, e) || !e.nextAt.IsZero() {
			t.Errorf("settled %v: attempt of a superseded event not finished (next at %v)", settled, e.nextAt)
		}
		if _, err := b.Store.PendingDelivery(ctx, j.ID, rev); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("settled %v: pending delivery still stored (%v)", settled, err)
		}
		log, err := b.Store.Deliveries(ctx, j.ID)
		if err != nil {
			t.Fatal(err)
		}
		superseded := len(log) == len(logged)+1 && log[len(log)-1].WebhookID == id && log[len(log)-1].Outcome == broker.OutcomeSuperseded
		if settled && len(log) != len(logged) {
			t.Errorf("an event whose attempts had failed got more in its delivery log: %+v", log)
		}
		if !settled && !superseded {
			t.Errorf("delivery log %+v, want %s recorded superseded last", log, id)
		}
	}
	if n := rcv.requests(); n != 0 {
		t.Fatalf("the receiver got %d requests, want none", n)
	}
}

// A manual redelivery carries its event: it is no stored one, and the pending delivery
// of the same event (here another foreman's, still retrying it) is left alone.
func TestManualAttemptLeavesThePendingDeliveryAlone(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	d := idleDispatcher(t, fastConfig(b.Store))
	ctx := ctxT(t)
	j, data, rev := storedEvent(t, b, rcv.URL)
	other := secondForeman(t, b)
	if _, created, err := other.AddPendingDelivery(ctx, broker.PendingDelivery{JobID: j.ID, Rev: rev, Attempts: 1, NextAt: time.Now().UTC(), Body: data}); err != nil || !created {
		t.Fatalf("store the pending delivery: %v %v", created, err)
	}
	job, err := broker.DecodeJob(data)
	if err != nil {
		t.Fatal(err)
	}
	e := &event{jobID: j.ID, rev: rev, body: data, job: job, manual: true, receiver: receiverOf(rcv.URL)}
	if !d.attempt(ctx, e) {
		t.Fatal("the manual attempt, answered 200, is not finished")
	}
	if p, err := b.Store.PendingDelivery(ctx, j.ID, rev); err != nil || p.Owner != other.BootID() || p.Attempts != 1 {
		t.Fatalf("pending delivery after a manual attempt: %+v, %v; want the other foreman's, untouched", p, err)
	}
}

// A manual redelivery that fails is retried with its own attempts, the same event each
// time, and given up after the last; it changes nothing of the automatic delivery.
func TestManualRedeliveryRetriesWithItsOwnAttempts(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, func(n int, _ hit) int {
		if n == 1 {
			return http.StatusOK // the automatic delivery
		}
		return http.StatusInternalServerError
	})
	cfg := fastConfig(b.Store)
	cfg.Attempts = 3
	runDispatcher(t, cfg)
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL, Events: []broker.State{broker.StateQueued}}})
	orig := rcv.next(t)
	waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool { return len(l) == 1 })
	if r := redeliver(t, b, j.ID); r.Error != "" {
		t.Fatalf("redeliver: %+v", r)
	}
	for i := range cfg.Attempts {
		if h := rcv.next(t); h.header.Get(HeaderID) != orig.header.Get(HeaderID) || string(h.body) != string(orig.body) {
			t.Fatalf("manual attempt %d sent %s %s, want the original event", i+1, h.header.Get(HeaderID), h.body)
		}
	}
	log := waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool { return len(l) == 1+cfg.Attempts })
	for i, a := range log[1:] {
		want := broker.OutcomeRetry
		if i+1 == cfg.Attempts {
			want = broker.OutcomeFailed
		}
		if !a.Manual || a.Attempt != i+1 || a.Outcome != want {
			t.Errorf("manual attempt %d logged %+v, want attempt %d %s", i+1, a, i+1, want)
		}
	}
	noMoreDeliveries(t, b, rcv)
}

// A manual redelivery answered 410 neither stops the job's later events nor counts for
// them: the 410 of an automatic delivery does.
func TestManualGoneDoesNotStopLaterEvents(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, func(n int, _ hit) int {
		if n == 2 { // the manual redelivery
			return http.StatusGone
		}
		return http.StatusOK
	})
	runDispatcher(t, fastConfig(b.Store))
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL}})
	rcv.next(t)
	waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool { return len(l) == 1 })
	if r := redeliver(t, b, j.ID); r.Error != "" {
		t.Fatalf("redeliver: %+v", r)
	}
	rcv.next(t)
	waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool {
		return len(l) == 2 && l[1].Manual && l[1].Outcome == broker.OutcomeGone
	})
	setState(t, b.Store, j.ID, broker.StateWorking)
	if h := rcv.next(t); h.job.State != broker.StateWorking {
		t.Fatalf("got %s, want the working event", h.body)
	}
	log := waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool { return len(l) == 3 })
	if a := log[2]; a.Manual || a.Outcome != broker.OutcomeDelivered || a.Attempt != 1 {
		t.Fatalf("the working event logged %+v, want delivered at its first attempt", a)
	}
}

// The last attempt is recorded for what it got, as any other: a 2xx delivered, a 410
// gone, a policy refusal refused; only a failure is "failed", and a 3xx (here a 300, no
// redirect) is a failure. OnAttempt hears "ok" for the delivery, "gave_up" for the rest.
func TestLastAttemptIsRecordedForWhatItGot(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	answer := func(status int) *receiver {
		return newReceiver(t, func(int, hit) int { return status })
	}
	ok, gone, failing, multiple := answer(http.StatusOK), answer(http.StatusGone), answer(http.StatusInternalServerError), answer(http.StatusMultipleChoices)
	cfg := fastConfig(b.Store)
	cfg.Attempts = 1
	cfg.Policy.LookupNetIP = names(map[string][]string{"metadata.test": {"169.254.169.254"}})
	var heard outcomes
	cfg.OnAttempt = heard.add
	runDispatcher(t, cfg)

	want := map[string]string{} // job id: outcome
	for url, outcome := range map[string]string{
		ok.URL:                  broker.OutcomeDelivered,
		gone.URL:                broker.OutcomeGone,
		failing.URL:             broker.OutcomeFailed,
		multiple.URL:            broker.OutcomeFailed,
		"http://metadata.test/": broker.OutcomeRefused,
	} {
		j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: url, Events: []broker.State{broker.StateQueued}}})
		want[j.ID] = outcome
	}
	for id, outcome := range want {
		log := waitLog(t, b.Store, id, func(l []broker.DeliveryAttempt) bool { return len(l) > 0 })
		if len(log) != 1 || log[0].Attempt != 1 || log[0].Outcome != outcome {
			t.Errorf("job %s: delivery log %+v, want one attempt %s", id, log, outcome)
		}
	}
	eventually(t, 15*time.Second, "OnAttempt told of every attempt", func() bool { return len(heard.list()) == len(want) })
	got := heard.list()
	slices.Sort(got)
	if w := []string{"gave_up", "gave_up", "gave_up", "gave_up", "ok"}; !slices.Equal(got, w) {
		t.Errorf("OnAttempt heard %v, want %v", got, w)
	}
	waitNoPending(t, b.Store)
}

// attemptOutcome maps every recorded outcome to what OnAttempt is told.
func TestAttemptOutcome(t *testing.T) {
	t.Parallel()
	for outcome, want := range map[string]string{
		broker.OutcomeDelivered: "ok",
		broker.OutcomeRetry:     "retry",
		broker.OutcomeFailed:    "gave_up",
		broker.OutcomeGone:      "gave_up",
		broker.OutcomeRefused:   "gave_up",
	} {
		if got := attemptOutcome(outcome); got != want {
			t.Errorf("attemptOutcome(%q) = %q, want %q", outcome, got, want)
		}
	}
}

// A failed attempt stores its progress with the pending delivery: the attempts made and
// when the next one is due (the backoff, or the wait a throttling receiver asked for:
// Standard Webhooks names 429, 502 and 504 as throttling, and a 503 says so too), so a
// restart or an adopter picks the retry up where it was.
func TestFailedAttemptStoresItsProgress(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	failing := newReceiver(t, func(int, hit) int { return http.StatusInternalServerError })
	throttling := map[string]bool{} // URL: a receiver asking for 600 s
	for _, code := range []int{http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "600")
			w.WriteHeader(code)
		}))
		t.Cleanup(srv.Close)
		throttling[srv.URL] = true
	}
	cfg := fastConfig(b.Store)
	cfg.BaseDelay, cfg.MaxDelay = time.Minute, time.Hour
	runDispatcher(t, cfg)

	before := time.Now()
	type stored struct {
		jobID string
		rev   uint64
		wait  time.Duration // the wait asked for, jittered ±20% unless a receiver's
		exact bool
	}
	events := map[string]stored{}
	waits := map[string]time.Duration{failing.URL: cfg.BaseDelay}
	for url := range throttling {
		waits[url] = 600 * time.Second
	}
	for url, wait := range waits {
		j, _, rev := storedEvent(t, b, url)
		events[url] = stored{jobID: j.ID, rev: rev, wait: wait, exact: throttling[url]}
	}
	for url, ev := range events {
		var p *broker.PendingDelivery
		eventually(t, 15*time.Second, "the failed attempt's progress stored", func() bool {
			var err error
			p, err = b.Store.PendingDelivery(ctxT(t), ev.jobID, ev.rev)
			return err == nil && p.Attempts == 1
		})
		after := time.Now()
		lo, hi := before.Add(ev.wait*8/10), after.Add(ev.wait*12/10)
		if ev.exact {
			lo, hi = before.Add(ev.wait), after.Add(ev.wait)
		}
		if p.NextAt.Before(lo) || p.NextAt.After(hi) {
			t.Errorf("%s: next attempt stored at %v, want within [%v, %v]", url, p.NextAt, lo, hi)
		}
	}
}

// lostWrites fails every write of a pending delivery's progress and of the delivery
// log, as a store whose writes time out.
type lostWrites struct{ Store }

func (lostWrites) UpdatePendingDelivery(context.Context, broker.PendingDelivery) (uint64, error) {
	return 0, fmt.Errorf("injected: %w", broker.ErrUnavailable)
}

func (lostWrites) LogDelivery(context.Context, string, broker.DeliveryAttempt) error {
	return fmt.Errorf("injected: %w", broker.ErrUnavailable)
}

// The attempts an event made are not forgotten when neither its progress nor its
// delivery log could be stored: it still gives up after Attempts.
func TestAttemptsCountWhenTheirWritesAreLost(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		requests.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	cfg := fastConfig(b.Store)
	cfg.Store = lostWrites{b.Store}
	cfg.Attempts = 2
	runDispatcher(t, cfg)
	submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: srv.URL, Events: []broker.State{broker.StateQueued}}})
	eventually(t, 15*time.Second, "the attempts made", func() bool { return requests.Load() >= int32(cfg.Attempts) })
	waitConsumerIdle(t, b)
	waitNoPending(t, b.Store) // given up
	if n := requests.Load(); n != int32(cfg.Attempts) {
		t.Fatalf("the receiver got %d requests, want %d", n, cfg.Attempts)
	}
}

// post sends the event as Standard Webhooks ask, signed only with a secret, and returns
// the wait only a 429 or a 503 asks for.
func TestPost(t *testing.T) {
	t.Parallel()
	var (
		mu   sync.Mutex
		last http.Header
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		last = r.Header.Clone()
		mu.Unlock()
		status, _ := strconv.Atoi(r.URL.Path[1:])
		w.Header().Set("Retry-After", "7")
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	body := []byte(`{"id":"j1"}`)
	post := func(d *Dispatcher, status int) (int, time.Duration, http.Header) {
		t.Helper()
		url := fmt.Sprintf("%s/%d", srv.URL, status)
		e := &event{jobID: "j1", rev: 7, body: body, job: &broker.Job{Webhook: &broker.Webhook{URL: url}}}
		got, wait, err := d.post(ctxT(t), e, e.webhookID())
		if err != nil {
			t.Fatalf("post: %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		return got, wait, last
	}
	cfg := Config{Store: &broker.Store{}, Secret: testSecret, Policy: Policy{AllowNets: loopbackNets}}
	signed := idleDispatcher(t, cfg)
	for status, want := range map[int]time.Duration{429: 7 * time.Second, 503: 7 * time.Second, 500: 0, 200: 0} {
		got, wait, h := post(signed, status)
		if got != status || wait != want {
			t.Errorf("status %d: post returned %d and a wait of %v, want %v", status, got, wait, want)
		}
		if h.Get("Content-Type") != "application/json" || h.Get("User-Agent") != "foreman-webhooks" || h.Get(HeaderID) != "j1-7" {
			t.Errorf("status %d: headers %v", status, h)
		}
		if err := Verify(testSecret, h, body, 0); err != nil {
			t.Errorf("status %d: %v", status, err)
		}
	}
	cfg.Secret = ""
	_, _, h := post(idleDispatcher(t, cfg), 200)
	if h.Get(HeaderID) != "j1-7" || h.Get(HeaderTimestamp) == "" || h.Get(HeaderSignature) != "" || h.Get(HeaderForeman) != "" {
		t.Errorf("unsigned delivery headers %v, want webhook-id and webhook-timestamp only", h)
	}
}

// A receiver answering with an endless body does not hold the attempt: foreman reads
// a bounded part of it (to reuse the connection) and has its status.
func TestPostReadsABoundedAnswer(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 32<<10)
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	d := idleDispatcher(t, Config{Store: &broker.Store{}, Timeout: time.Hour, Policy: Policy{AllowNets: loopbackNets}})
	e := &event{jobID: "j1", rev: 1, body: []byte(`{}`), job: &broker.Job{Webhook: &broker.Webhook{URL: srv.URL}}}
	type result struct {
		status int
		err    error
	}
	done := make(chan result, 1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // ends a post that reads on
	go func() {
		status, _, err := d.post(ctx, e, e.webhookID())
		done <- result{status, err}
	}()
	select {
	case r := <-done:
		if r.status != http.StatusOK || r.err != nil {
			t.Fatalf("post: %d %v, want 200", r.status, r.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("post still reads the receiver's endless answer")
	}
}

// Retry-After is read as RFC 9110 has it: delay-seconds (a non-negative integer) or an
// HTTP date; anything else, a negative number or a date past, asks for no wait.
func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Now()
	for v, want := range map[string]time.Duration{
		"":   0,
		"0":  0,
		"7":  7 * time.Second,
		"-5": 0,
		now.Add(-time.Hour).UTC().Format(http.TimeFormat): 0,
		"soon": 0,
	} {
		if got := parseRetryAfter(v, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", v, got, want)
		}
	}
}

// backoff stays within its bounds for any attempt (Attempts may be large): BaseDelay
// doubled per attempt, jittered ±20% (both ways), never above MaxDelay nor 0. The jitter
// is checked over many draws: a range narrower than ±20% would show, save with a
// vanishing chance (0.75^2000), in neither bound being approached.
func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	d := &Dispatcher{cfg: Config{BaseDelay: time.Second, MaxDelay: time.Minute}}
	lo, hi := time.Hour, time.Duration(0)
	for range 2000 {
		w := d.backoff(1, 0)
		if w < 800*time.Millisecond || w > 1200*time.Millisecond {
			t.Fatalf("attempt 1: wait %v, want 1s ±20%%", w)
		}
		lo, hi = min(lo, w), max(hi, w)
	}
	if lo > 900*time.Millisecond || hi < 1100*time.Millisecond {
		t.Errorf("attempt 1: waits within [%v, %v], want them spread over 1s ±20%%", lo, hi)
	}
	for n := 1; n <= 1000; n++ {
		w := d.backoff(n, 0)
		if w <= 0 || w > d.cfg.MaxDelay {
			t.Fatalf("attempt %d: wait %v, want within (0, %v]", n, w, d.cfg.MaxDelay)
		}
		if n >= 8 && w != d.cfg.MaxDelay { // 1s·2^7·0.8 > 1m
			t.Fatalf("attempt %d: wait %v, want the cap %v", n, w, d.cfg.MaxDelay)
		}
	}
}
