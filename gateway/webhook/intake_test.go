package webhook

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A consumer removed while foreman runs (`nats consumer rm`, a cluster that lost it) is
// made again: the dispatcher goes on delivering rather than ending its Run, which foreman
// would take for a clean stop while its /healthz stayed green.
func TestDeliversAfterItsConsumerWasDeleted(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	d, err := New(fastConfig(b.Store))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL}})
	if h := rcv.next(t); h.job.State != broker.StateQueued {
		t.Fatalf("got %s", h.body)
	}
	if err := b.JetStream(t).DeleteConsumer(ctxT(t), "KV_"+broker.JobsBucket, "webhooks"); err != nil {
		t.Fatal(err)
	}
	setState(t, b.Store, j.ID, broker.StateWorking)
	if h := rcv.next(t); h.job.State != broker.StateWorking {
		t.Fatalf("after the consumer was deleted, got %s", h.body)
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned %v while its context lives", err)
	default:
	}
	noMoreDeliveries(t, b, rcv) // the queued event, delivered before, is not sent again
}

// failingAdds fails the first n stores of pending deliveries of one state, as writes do
// that time out in a leader election.
type failingAdds struct {
	Store
	state broker.State
	n     atomic.Int32
}

func (s *failingAdds) AddPendingDelivery(ctx context.Context, p broker.PendingDelivery) (uint64, bool, error) {
	if j, err := broker.DecodeJob(p.Body); err == nil && j.State == s.state && s.n.Add(-1) >= 0 {
		return 0, false, fmt.Errorf("injected: %w", broker.ErrUnavailable)
	}
	return s.Store.AddPendingDelivery(ctx, p)
}

// An event whose pending delivery could not be stored for a while still goes out before
// its job's later events (ADR-0005: a job's events in order).
func TestEventNotStoredAtOnceKeepsItsPlace(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL}})
	setState(t, b.Store, j.ID, broker.StateWorking)
	setState(t, b.Store, j.ID, broker.StateDone)
	st := &failingAdds{Store: b.Store, state: broker.StateWorking}
	st.n.Store(2)
	cfg := fastConfig(b.Store)
	cfg.Store = st
	cfg.BaseDelay = 100 * time.Millisecond
	runDispatcher(t, cfg)
	var got []broker.State
	for range 3 {
		got = append(got, rcv.next(t).job.State)
	}
	if want := []broker.State{broker.StateQueued, broker.StateWorking, broker.StateDone}; !slices.Equal(got, want) || st.n.Load() >= 0 {
		t.Fatalf("events delivered as %v (failures left %d), want %v", got, st.n.Load(), want)
	}
	noMoreDeliveries(t, b, rcv)
}

// Two foremen on one NATS run a dispatcher each on the one durable consumer; one at a
// time takes the events (ADR-0052), so a job's event waiting for a retry is not
// overtaken by its later events sent by the other foreman.
func TestTwoForemenKeepAJobsEventsInOrder(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	var mu sync.Mutex
	refused := map[string]bool{}
	rcv := newReceiver(t, func(_ int, h hit) int {
		mu.Lock()
		defer mu.Unlock()
		if h.job != nil && h.job.State == broker.StateQueued && !refused[h.job.ID] {
			refused[h.job.ID] = true // each job's first event is refused once
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	nc2, err := b.Server.Connect() // a second foreman process's connection
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc2.Close)
	st2, err := broker.Open(ctxT(t), broker.Config{Conn: nc2})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []*broker.Store{b.Store, st2} {
		cfg := fastConfig(st)
		cfg.BaseDelay, cfg.MaxDelay = 300*time.Millisecond, time.Second
		runDispatcher(t, cfg)
	}
	const jobs = 6
	for range jobs {
		j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL}})
		setState(t, b.Store, j.ID, broker.StateWorking)
		setState(t, b.Store, j.ID, broker.StateDone)
	}
	got := map[string][]broker.State{}
	for range jobs * 4 { // three events each, each queued event twice
		h := rcv.next(t)
		got[h.job.ID] = append(got[h.job.ID], h.job.State)
	}
	want := []broker.State{broker.StateQueued, broker.StateQueued, broker.StateWorking, broker.StateDone}
	for id, states := range got {
		if !slices.Equal(states, want) {
			t.Errorf("job %s: events arrived as %v, want %v", id, states, want)
		}
	}
	noMoreDeliveries(t, b, rcv)
}

// hiddenAtStart hides the pending deliveries from the dispatcher's start, as entries it
// could not read then: the event's own message, offered again, brings each back.
type hiddenAtStart struct{ Store }

func (s hiddenAtStart) ClaimPendingDeliveries(ctx context.Context, skip func(string, uint64) bool) ([]broker.PendingDelivery, []broker.PendingRef, error) {
	if skip == nil {
		return nil, nil, nil
	}
	return s.Store.ClaimPendingDeliveries(ctx, skip)
}

// An event JetStream offers again (its ack was lost) whose pending delivery waits for a
// retry keeps that wait: it is not sent before the stored next attempt.
func TestEventOfferedAgainKeepsItsRetryWait(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	arrivals := make(chan time.Time, 10)
	rcv := newReceiver(t, func(int, hit) int {
		arrivals <- time.Now()
		return http.StatusOK
	})
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL}})
	data, rev, err := b.Store.GetRaw(ctxT(t), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	// A first attempt failed and stored its retry, due in 2s; the event's ack was lost.
	due := time.Now().Add(2 * time.Second)
	p := broker.PendingDelivery{JobID: j.ID, Rev: rev, Attempts: 1, NextAt: due.UTC(), Body: data}
	if _, created, err := b.Store.AddPendingDelivery(ctxT(t), p); err != nil || !created {
		t.Fatalf("store the pending delivery: created %v, %v", created, err)
	}
	cfg := fastConfig(b.Store)
	cfg.Store = hiddenAtStart{b.Store}
	cfg.MaxDelay = 3 * time.Second // a wait of 2s is one it can have stored
	runDispatcher(t, cfg)

	h := rcv.next(t)
	if want := (&event{jobID: j.ID, rev: rev}).webhookID(); h.header.Get(HeaderID) != want {
		t.Fatalf("delivered %s, want %s", h.header.Get(HeaderID), want)
	}
	if at := <-arrivals; at.Before(due) {
		t.Fatalf("the retry went out %v before it was due", due.Sub(at))
	}
	log := waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool { return len(l) == 1 })
	if log[0].Attempt != 2 || log[0].Outcome != broker.OutcomeDelivered {
		t.Fatalf("delivery log %+v, want attempt 2 delivered", log)
	}
}

// A stored retry dated an hour ahead (by a foreman whose clock was ahead, or before this
// host's clock stepped back) comes due within MaxDelay, the longest wait there is: taken
// as stored it held the delivery for an hour, past its receiver's patience or the job's
// TTL. Both ways a stored delivery is taken up: read at the dispatcher's start, and
// brought back by its event offered again.
func TestStoredRetryDatedAheadWaitsAtMostMaxDelay(t *testing.T) {
	t.Parallel()
	for _, hidden := range []bool{false, true} {
		b := brokertest.New(t)
		rcv := newReceiver(t, func(int, hit) int { return http.StatusOK })
		j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL}})
		data, rev, err := b.Store.GetRaw(ctxT(t), j.ID)
		if err != nil {
			t.Fatal(err)
		}
		p := broker.PendingDelivery{JobID: j.ID, Rev: rev, Attempts: 1, NextAt: time.Now().Add(time.Hour).UTC(), Body: data}
		if _, created, err := b.Store.AddPendingDelivery(ctxT(t), p); err != nil || !created {
			t.Fatalf("store the pending delivery: created %v, %v", created, err)
		}
		cfg := fastConfig(b.Store)
		if hidden {
			cfg.Store = hiddenAtStart{b.Store}
		}
		stop := runDispatcher(t, cfg)
		if h := rcv.next(t); h.header.Get(HeaderID) != (&event{jobID: j.ID, rev: rev}).webhookID() {
			t.Fatalf("hidden at start %v: delivered %s", hidden, h.header.Get(HeaderID))
		}
		stop()
	}
}

// An event whose last attempt is in the delivery log, but whose pending delivery is
// still stored (foreman stopped after logging the attempt, before it removed the entry),
// is removed without another attempt, whether it is read at the dispatcher's start or
// brought back by its event offered again.
func TestEventWithAttemptsSpentIsNotSentAgain(t *testing.T) {
	t.Parallel()
	for _, hidden := range []bool{false, true} {
		b := brokertest.New(t)
		rcv := newReceiver(t, func(int, hit) int { return http.StatusOK })
		j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL}})
		data, rev, err := b.Store.GetRaw(ctxT(t), j.ID)
		if err != nil {
			t.Fatal(err)
		}
		cfg := fastConfig(b.Store)
		cfg.Attempts = 3
		id := (&event{jobID: j.ID, rev: rev}).webhookID()
		for n := 1; n <= cfg.Attempts; n++ {
			outcome := broker.OutcomeRetry
			if n == cfg.Attempts {
				outcome = broker.OutcomeFailed
			}
			a := broker.DeliveryAttempt{WebhookID: id, State: j.State, Attempt: n, URL: rcv.URL, Status: http.StatusInternalServerError, Outcome: outcome, At: time.Now().UTC()}
			if err := b.Store.LogDelivery(ctxT(t), j.ID, a); err != nil {
				t.Fatal(err)
			}
		}
		p := broker.PendingDelivery{JobID: j.ID, Rev: rev, Attempts: cfg.Attempts - 1, NextAt: time.Now().UTC(), Body: data}
		if _, created, err := b.Store.AddPendingDelivery(ctxT(t), p); err != nil || !created {
			t.Fatalf("store the pending delivery: created %v, %v", created, err)
		}
		if hidden {
			cfg.Store = hiddenAtStart{b.Store}
		}
		stop := runDispatcher(t, cfg)
		noMoreDeliveries(t, b, rcv)
		stop()
	}
}
