package webhook

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// failsJobAtStart is a store whose start claim fails to read job's entries (reported
// failed, as a transient read error does); later claims read them. It tells when the
// start claim returned, and when handle stored an entry of job (its revision).
type failsJobAtStart struct {
	Store
	job     string
	started chan struct{}
	stored  chan struct{} // closed once, storedRev then set
	once    atomic.Bool
	rev     atomic.Uint64
}

func (s *failsJobAtStart) ClaimPendingDeliveries(ctx context.Context, skip func(string, uint64) bool) ([]broker.PendingDelivery, []broker.PendingRef, error) {
	out, failed, err := s.Store.ClaimPendingDeliveries(ctx, skip)
	if skip == nil && err == nil {
		defer close(s.started)
		out = slices.DeleteFunc(out, func(p broker.PendingDelivery) bool {
			if p.JobID == s.job {
				failed = append(failed, broker.PendingRef{JobID: p.JobID, Rev: p.Rev})
				return true
			}
			return false
		})
	}
	return out, failed, err
}

func (s *failsJobAtStart) AddPendingDelivery(ctx context.Context, p broker.PendingDelivery) (uint64, bool, error) {
	rev, created, err := s.Store.AddPendingDelivery(ctx, p)
	if err == nil && p.JobID == s.job && s.once.CompareAndSwap(false, true) {
		s.rev.Store(p.Rev)
		close(s.stored)
	}
	return rev, created, err
}

// A job's entry a claim failed to read holds back the job's later events, though the
// claim read none of them: the start claim fails to read the queued event's entry, the
// working event comes, and it went out at once; the next claim read the queued one,
// which its load then found superseded, a state the receiver never got.
func TestFailedEntryHoldsBackItsJobsLaterEvents(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	// The queued event is stored by hand (as an earlier run of this foreman left it);
	// the dispatcher takes only the working one from the stream.
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL + "/h", Events: []broker.State{broker.StateWorking}}})
	body, rev, err := b.Store.GetRaw(ctxT(t), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Store.AddPendingDelivery(ctxT(t), broker.PendingDelivery{JobID: j.ID, Rev: rev, NextAt: time.Now(), Body: body}); err != nil {
		t.Fatal(err)
	}
	st := &failsJobAtStart{Store: b.Store, job: j.ID, started: make(chan struct{}), stored: make(chan struct{})}
	cfg := fastConfig(b.Store)
	cfg.Store = st
	cfg.ClaimEvery = time.Hour
	d, _ := startDispatcher(t, cfg)
	<-st.started
	setState(t, b.Store, j.ID, broker.StateWorking)
	select {
	case <-st.stored:
	case <-time.After(15 * time.Second):
		t.Fatal("the working event was not stored")
	}
	working := st.rev.Load()
	id := (&event{jobID: j.ID, rev: working}).webhookID()
	eventually(t, 15*time.Second, "the working event queued or spilled", func() bool { d.mu.Lock(); defer d.mu.Unlock(); return !d.intake[id] })
	d.claim(ctxT(t)) // the next periodic claim
	var got []broker.State
	for len(got) < 2 {
		h := rcv.next(t)
		got = append(got, h.job.State)
		if h.job.State == broker.StateWorking {
			break
		}
	}
	if want := []broker.State{broker.StateQueued, broker.StateWorking}; !slices.Equal(got, want) {
		log, _ := b.Store.Deliveries(ctxT(t), j.ID)
		t.Fatalf("job %s's events arrived as %v, want %v; delivery log %+v", j.ID, got, want, log)
	}
}

// failsAlways is a store whose every claim fails to read job's entry of rev.
type failsAlways struct {
	Store
	job string
	rev uint64
}

func (s failsAlways) ClaimPendingDeliveries(ctx context.Context, skip func(string, uint64) bool) ([]broker.PendingDelivery, []broker.PendingRef, error) {
	out, failed, err := s.Store.ClaimPendingDeliveries(ctx, skip)
	return out, append(failed, broker.PendingRef{JobID: s.job, Rev: s.rev}), err
}

// A claim that fails to read a job's entry, and so leaves the job's later entry in the
// store, wakes no claim: one did, which failed alike and woke the next, claims back to
// back for as long as the failure lasted, each reading every pending delivery.
func TestFailingEntryWakesNoClaim(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: "http://127.0.0.1:9/h"}})
	body, rev, err := b.Store.GetRaw(ctxT(t), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	// The entry failing is of an earlier revision than the one read.
	if _, _, err := b.Store.AddPendingDelivery(ctxT(t), broker.PendingDelivery{JobID: j.ID, Rev: rev + 1, NextAt: time.Now(), Body: body}); err != nil {
		t.Fatal(err)
	}
	cfg := fastConfig(b.Store)
	cfg.Store = failsAlways{Store: b.Store, job: j.ID, rev: rev}
	d, err := New(cfg) // not run: the test makes the claims
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		d.claim(ctxT(t))
		d.mu.Lock()
		nudged, laned, sj := len(d.nudge), d.lanes[j.ID] != nil, d.spilled[j.ID]
		d.mu.Unlock()
		if nudged != 0 {
			t.Fatalf("claim %d woke another claim", i+1)
		}
		if laned || sj.rev != rev+1 {
			t.Fatalf("claim %d: job's later entry laned %v, spilled up to %d; want it spilled, up to %d", i+1, laned, sj.rev, rev+1)
		}
	}
}

// finishDuringClaim runs a claim of d while finish removes job's first event, and fails
// that removal and the event's delivery log write.
type finishDuringClaim struct {
	Store
	d          atomic.Pointer[Dispatcher]
	job        string
	done, logs atomic.Bool
}

func (s *finishDuringClaim) FinishPendingDelivery(ctx context.Context, id string, rev uint64) error {
	if d := s.d.Load(); d != nil && id == s.job && !s.done.Load() {
		d.claim(ctx)
		s.done.Store(true)
		return errors.New("removal lost")
	}
	return s.Store.FinishPendingDelivery(ctx, id, rev)
}

func (s *finishDuringClaim) LogDelivery(ctx context.Context, id string, a broker.DeliveryAttempt) error {
	if id == s.job && s.logs.CompareAndSwap(false, true) {
		return errors.New("delivery log write lost")
	}
	return s.Store.LogDelivery(ctx, id, a)
}

// An event finish is removing from the store is left alone by a claim: one read it
// (no longer known, its entry not yet gone) and queued it again, and with the removal
// and the delivery log write lost, it went out twice.
func TestEventBeingFinishedIsNotQueuedAgain(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	j := broker.Job{ID: broker.NewID(), Webhook: &broker.Webhook{URL: rcv.URL + "/h"}}
	st := &finishDuringClaim{Store: b.Store, job: j.ID}
	cfg := fastConfig(b.Store)
	cfg.Store = st
	cfg.ClaimEvery = time.Hour
	d, _ := startDispatcher(t, cfg)
	st.d.Store(d)
	submit(t, b.Store, &j)
	if h := rcv.next(t); h.job.State != broker.StateQueued {
		t.Fatalf("got %s, want the queued event", h.job.State)
	}
	eventually(t, 15*time.Second, "the event finished", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return st.done.Load() && d.lanes[j.ID] == nil
	})
	if n := len(rcv.hits); n != 0 {
		t.Fatalf("the event went out %d more times", n)
	}
}

// A job spilled first with an entry resume could not decode (receiver "") and then with
// one of a receiver counts under the first: the second's receiver was marked as having
// events in the store, a mark no job's take-up ever cleared.
func TestSpillCountsUnderTheJobsReceiver(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	d, err := New(fastConfig(b.Store))
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.spillLocked(&event{jobID: "j", rev: 1}, false, true)
	d.spillLocked(&event{jobID: "j", rev: 2, receiver: "r:80"}, false, true)
	if s := d.spills[""]; s == nil || s.jobs != 1 || len(d.spills) != 1 {
		t.Fatalf("spills %v, want job j counted under receiver \"\" only", d.spills)
	}
	d.takenUpLocked("j")
	if len(d.spills) != 0 || len(d.spilled) != 0 {
		t.Fatalf("after the take-up: spills %v, spilled %v; want none", d.spills, d.spilled)
	}
}

// claimsFail is a store whose claims fail while fail is set, as during a NATS outage.
type claimsFail struct {
	Store
	fail *atomic.Bool
}

func (s claimsFail) ClaimPendingDeliveries(ctx context.Context, skip func(string, uint64) bool) ([]broker.PendingDelivery, []broker.PendingRef, error) {
	if s.fail.Load() {
		return nil, nil, errors.New("nats: connection closed")
	}
	return s.Store.ClaimPendingDeliveries(ctx, skip)
}

// Claims failing one after the other (a NATS outage fails each periodic look) warn once,
// the repeats at debug, and the first claim that reads the store again says so once: the
// operator sees where the outage ended for this loop too. Each failure was warned of,
// and nothing told of its end.
func TestFailingClaimsWarnOnceAndTellOfTheirEnd(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	var logs logBuffer
	var fail atomic.Bool
	fail.Store(true)
	cfg := fastConfig(b.Store)
	cfg.Store = claimsFail{Store: b.Store, fail: &fail}
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := New(cfg) // not run: the test makes the claims
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		d.claim(ctxT(t))
	}
	fail.Store(false)
	for range 2 {
		d.claim(ctxT(t))
	}
	out := logs.buf.String()
	if n := logs.count("level=WARN", msgClaim, "connection closed"); n != 1 {
		t.Errorf("%d warnings of the failing claims, want 1:\n%s", n, out)
	}
	if n := logs.count("level=DEBUG", msgClaim, "connection closed"); n != 2 {
		t.Errorf("%d debug lines of the repeats, want 2:\n%s", n, out)
	}
	if n := logs.count("level=INFO", msgClaim+": works again", "failures=3"); n != 1 {
		t.Errorf("%d lines telling the claims work again (failures=3), want 1:\n%s", n, out)
	}
}
