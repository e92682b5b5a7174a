package webhook

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// claimsGated holds the dispatcher's periodic claims: the first that takes any delivery
// up, once it read them, until resume is closed (listed closed meanwhile); every later
// one until later is closed.
type claimsGated struct {
	Store
	listed, resume, later chan struct{}
	first                 *atomic.Bool
}

func (s claimsGated) ClaimPendingDeliveries(ctx context.Context, skip func(string, uint64) bool) ([]broker.PendingDelivery, []broker.PendingRef, error) {
	if skip != nil && s.first.Load() {
		select {
		case <-s.later:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
	out, failed, err := s.Store.ClaimPendingDeliveries(ctx, skip)
	if skip != nil && len(out) > 0 && s.first.CompareAndSwap(false, true) {
		close(s.listed)
		select {
		case <-s.resume:
		case <-ctx.Done():
		}
	}
	return out, failed, err
}

// A job's later event does not overtake its event spilled earlier, lane or not. The
// job's queued event spills (its receiver holds its most lanes); a claim reads it; the
// working event comes meanwhile and spills behind it; the claim's resume gives the
// queued one a lane; the done event comes. It went into that lane right behind the
// queued one, and the working event, taken up by the next claim, was then superseded
// (ADR-0055): a state the receiver never got.
func TestLaterEventWaitsBehindItsJobsSpilledOne(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	var mu sync.Mutex
	var got []broker.State
	var jid string
	others, releaseJ := make(chan struct{}), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		j, _ := broker.DecodeJob(body)
		mu.Lock()
		isJ := j != nil && j.ID == jid
		mu.Unlock()
		if !isJ {
			<-others
			return
		}
		<-releaseJ
		mu.Lock()
		got = append(got, j.State)
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	var openOthers, openJ sync.Once
	t.Cleanup(func() { openOthers.Do(func() { close(others) }); openJ.Do(func() { close(releaseJ) }) }) // before the server closes
	cfg := fastConfig(b.Store)
	gated := claimsGated{Store: b.Store, listed: make(chan struct{}), resume: make(chan struct{}), later: make(chan struct{}), first: &atomic.Bool{}}
	cfg.Store = gated
	cfg.PerReceiver = 1
	cfg.Timeout = time.Hour
	cfg.ClaimEvery = time.Hour
	cfg.busyPause = time.Hour
	d, _ := startDispatcher(t, cfg)
	var openLater sync.Once
	t.Cleanup(func() { openLater.Do(func() { close(gated.later) }) })

	for range d.laneCap() {
		submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: srv.URL + "/h", Events: []broker.State{broker.StateQueued}}})
	}
	settledCensus(t, d, d.laneCap())
	mu.Lock()
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: srv.URL + "/h"}})
	jid = j.ID
	mu.Unlock()
	rcv := receiverOf(srv.URL)
	gen := func() uint64 {
		d.mu.Lock()
		defer d.mu.Unlock()
		if s := d.spills[rcv]; s != nil {
			return s.gen
		}
		return 0
	}
	eventually(t, 15*time.Second, "the queued event spilled", func() bool { return gen() > 0 })
	openOthers.Do(func() { close(others) }) // the lanes free; a claim reads the queued event
	<-gated.listed
	before := gen()
	setState(t, b.Store, j.ID, broker.StateWorking)
	eventually(t, 15*time.Second, "the working event spilled", func() bool { return gen() > before })
	close(gated.resume)
	eventually(t, 15*time.Second, "the queued event's lane", func() bool { d.mu.Lock(); defer d.mu.Unlock(); return d.lanes[j.ID] != nil })
	before = gen()
	setState(t, b.Store, j.ID, broker.StateDone)
	eventually(t, 15*time.Second, "the done event taken", func() bool {
		d.mu.Lock()
		l := d.lanes[j.ID]
		queued := l != nil && len(l.queue) >= 2
		d.mu.Unlock()
		return queued || gen() > before
	})
	openLater.Do(func() { close(gated.later) })
	openJ.Do(func() { close(releaseJ) })
	waitNoPending(t, b.Store)
	mu.Lock()
	defer mu.Unlock()
	if want := []broker.State{broker.StateQueued, broker.StateWorking, broker.StateDone}; !slices.Equal(got, want) {
		log, _ := b.Store.Deliveries(ctxT(t), j.ID)
		t.Fatalf("job %s's events arrived as %v, want %v; delivery log %+v", j.ID, got, want, log)
	}
}

// A receiver stops counting as having events in the store once a claim took them up,
// whatever else the store holds: here another live foreman's pending delivery, which
// a claim counted among those it did not take up, so the mark stayed.
func TestSpillMarkClearsBesideAnotherForemansDelivery(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	other := secondForeman(t, b)
	elsewhere := submit(t, b.Store, &broker.Job{})
	if _, _, err := other.AddPendingDelivery(ctxT(t), broker.PendingDelivery{JobID: elsewhere.ID, Rev: 1, NextAt: time.Now().Add(time.Hour), Body: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	hang := newHangingReceiver(t)
	cfg := fastConfig(b.Store)
	cfg.PerReceiver = 1
	cfg.Timeout = time.Hour
	cfg.ClaimEvery = time.Hour
	cfg.busyPause = time.Hour
	d, _ := startDispatcher(t, cfg)
	for range d.laneCap() + 1 {
		submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: hang.URL + "/h", Events: []broker.State{broker.StateQueued}}})
	}
	rcv := receiverOf(hang.URL)
	eventually(t, 15*time.Second, "an event spilled", func() bool { d.mu.Lock(); defer d.mu.Unlock(); return d.spills[rcv] != nil })
	hang.recover()
	eventually(t, 15*time.Second, "every event delivered", func() bool { return len(hang.answered()) == d.laneCap()+1 })
	eventually(t, 15*time.Second, "no receiver marked as having events in the store", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(d.spills) == 0 && len(d.spilled) == 0
	})
}

// claimDuringIntake runs a claim of d while handle stores job's first event, right after
// the store, and waits for any lane that claim gave the job to finish; and it fails the
// job's first delivery log write.
type claimDuringIntake struct {
	Store
	d             atomic.Pointer[Dispatcher]
	job           atomic.Value // string
	claimed, logs atomic.Bool
}

func (s *claimDuringIntake) AddPendingDelivery(ctx context.Context, p broker.PendingDelivery) (uint64, bool, error) {
	rev, created, err := s.Store.AddPendingDelivery(ctx, p)
	if d := s.d.Load(); err == nil && d != nil && p.JobID == s.job.Load() && s.claimed.CompareAndSwap(false, true) {
		d.claim(ctx)
		for {
			d.mu.Lock()
			laned := d.lanes[p.JobID] != nil
			d.mu.Unlock()
			if !laned || ctx.Err() != nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond): // polls, as eventually does
			}
		}
	}
	return rev, created, err
}

func (s *claimDuringIntake) LogDelivery(ctx context.Context, id string, a broker.DeliveryAttempt) error {
	if id == s.job.Load() && s.logs.CompareAndSwap(false, true) {
		return errors.New("delivery log write lost")
	}
	return s.Store.LogDelivery(ctx, id, a)
}

// An event a claim reads while handle stores and queues it is left to handle: the
// claim queued it too, its lane sent it (the log write of that attempt lost), and
// handle's queued it again, sent a second time.
func TestEventStoredWhileAClaimRunsIsSentOnce(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	st := &claimDuringIntake{Store: b.Store}
	st.job.Store("")
	cfg := fastConfig(b.Store)
	cfg.Store = st
	cfg.ClaimEvery = time.Hour
	d, _ := startDispatcher(t, cfg)
	st.d.Store(d)
	j := broker.Job{ID: broker.NewID(), Webhook: &broker.Webhook{URL: rcv.URL}}
	st.job.Store(j.ID)
	submit(t, b.Store, &j)
	setState(t, b.Store, j.ID, broker.StateWorking)
	var got []broker.State
	for len(got) == 0 || got[len(got)-1] != broker.StateWorking {
		got = append(got, rcv.next(t).job.State)
	}
	if want := []broker.State{broker.StateQueued, broker.StateWorking}; !slices.Equal(got, want) {
		t.Fatalf("job %s's events arrived as %v, want %v", j.ID, got, want)
	}
}
