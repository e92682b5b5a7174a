package webhook

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// A receiver that hangs, named by many jobs, used to hold a lane in memory for each of
// them: its events, map entries, a place in the parked list and a timer, for as long as
// the receiver hung (1,500 jobs, 1,500 lanes). Now a receiver holds at most laneCap
// lanes; a stored event of a job with no lane beyond that stays in the store only (it
// is spilled), and a claim takes it up again once the receiver's lanes free (ADR-0022).

// laneCap is the number of jobs' lanes a receiver may hold: 2 × PerReceiver running
// (attempts in flight, lanes waiting for a slot) and as many parked, ready for a slot
// freed without a read of the whole store; 64 by default.
func (d *Dispatcher) laneCap() int { return 4 * d.cfg.PerReceiver }

// errSpilled is enqueue leaving a stored event in the store: its receiver holds laneCap
// lanes.
var errSpilled = errors.New("webhook receiver holds its most lanes; the event waits in the store")

// receiverFullError is enqueue refusing a manual redelivery (which would carry its body
// in memory) of a job with no lane to a receiver holding laneCap lanes.
type receiverFullError struct {
	jobID, receiver string
	lanes           int
}

func (e *receiverFullError) Error() string {
	return fmt.Sprintf("the webhook receiver of job %s (%s) has %d jobs' events waiting; ask again once they are delivered", e.jobID, e.receiver, e.lanes)
}

// spill is a receiver with events spilled: stored, held by no lane.
type spill struct {
	gen     uint64 // events spilled so far
	claimed uint64 // gen when the last claim that read the store began
}

// spill leaves stored event e in the store.
func (d *Dispatcher) spill(e *event) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.spillLocked(e)
}

// spillLocked is spill; d.mu is held. The receiver is marked as having events in the
// store until a claim takes all of them up: meanwhile a job's event finds out from the
// store whether an earlier one of its job waits there (admit).
func (d *Dispatcher) spillLocked(e *event) {
	s := d.spills[e.receiver]
	if s == nil {
		s = &spill{}
		d.spills[e.receiver] = s
	}
	s.gen++
	d.nudgeLocked(e.receiver)
}

// laneGoneLocked counts a lane of receiver out; d.mu is held.
func (d *Dispatcher) laneGoneLocked(receiver string) {
	if d.held[receiver]--; d.held[receiver] <= 0 {
		delete(d.held, receiver)
	}
	d.nudgeLocked(receiver)
}

// nudgeLocked wakes claimLoop when receiver has events spilled since the last claim
// began and room for half its lanes: a claim reads every pending delivery held by no
// lane, so it runs once per laneCap/2 events taken up at most, not once per lane freed.
// d.mu is held.
func (d *Dispatcher) nudgeLocked(receiver string) {
	s := d.spills[receiver]
	if s == nil || s.gen == s.claimed || d.held[receiver] > d.laneCap()/2 {
		return
	}
	select {
	case d.nudge <- struct{}{}:
	default: // one is due already
	}
}

// admit queues an event intake stored. While its receiver has events spilled, one of a
// job with no lane may have an earlier event of its job among them: it is spilled too
// (a claim takes both up, in order), or it would go out first and the earlier one be
// superseded (ADR-0055), a state lost to the receiver for a fault of foreman's.
func (d *Dispatcher) admit(ctx context.Context, e *event) {
	d.mu.Lock()
	check := d.lanes[e.jobID] == nil && d.spills[e.receiver] != nil
	d.mu.Unlock()
	if check {
		revs, err := d.store.PendingDeliveryRevs(ctx, e.jobID)
		if err != nil {
			if ctx.Err() == nil {
				d.log.Warn("list a job's pending webhook deliveries; the event waits for a claim", "job_id", e.jobID, "err", err)
			}
			d.spill(e)
			return
		}
		if d.earlierUnheld(e, revs) {
			d.spill(e)
			return
		}
	}
	_ = d.enqueue(ctx, e) // errStopping or errSpilled: the pending delivery waits for a claim
}

// earlierUnheld reports whether revs (of e's job's pending deliveries) name an event
// earlier than e that no lane holds.
func (d *Dispatcher) earlierUnheld(e *event, revs []uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, rev := range revs {
		if rev < e.rev && !d.known[(&event{jobID: e.jobID, rev: rev}).webhookID()] {
			return true
		}
	}
	return false
}

// claim takes up the pending deliveries no lane holds: adopted from foremen that are
// gone, and this one's own spilled ones (resume leaves those beyond laneCap in the
// store again). A receiver stops counting as having events spilled once a claim took
// up every one: none spilled since it began, and it read every entry it listed (one
// it could not read, or of another foreman alive, may be a spilled one; the receiver
// stays marked, and costs admit a listing per new lane, until a later claim).
func (d *Dispatcher) claim(ctx context.Context) {
	d.mu.Lock()
	began := make(map[string]uint64, len(d.spills))
	for r, s := range d.spills {
		began[r] = s.gen
	}
	d.mu.Unlock()
	unheld := 0
	claimed, err := d.store.ClaimPendingDeliveries(ctx, func(jobID string, rev uint64) bool {
		if d.holds(jobID, rev) {
			return true
		}
		unheld++
		return false
	})
	if err != nil {
		if ctx.Err() == nil {
			d.log.Warn("look for pending webhook deliveries of foremen that are gone", "err", err)
		}
		return
	}
	if len(claimed) > 0 {
		d.log.Info("pending webhook deliveries taken up (adopted, or this foreman's own held by no lane)", "deliveries", len(claimed))
	}
	d.resume(ctx, claimed)
	d.mu.Lock()
	defer d.mu.Unlock()
	for r, gen := range began {
		s := d.spills[r]
		if s == nil {
			continue
		}
		s.claimed = max(s.claimed, gen)
		if s.gen == gen && unheld == len(claimed) {
			delete(d.spills, r)
		}
	}
}

// armBackstop starts rs's backstop unless it runs: after about busyPause it wakes the
// lane parked longest, and so on while any is parked (a lane woken that finds the
// receiver busy parks again, last). slotsMu is held.
func (d *Dispatcher) armBackstop(ctx context.Context, rs *receiverSlots) {
	if rs.backstop != nil {
		return
	}
	wait := time.Duration(float64(d.cfg.busyPause) * (0.8 + 0.4*rand.Float64()))
	var t *time.Timer
	t = time.AfterFunc(wait, func() {
		d.slotsMu.Lock()
		if rs.backstop != t { // stopped: the receiver's last user left
			d.slotsMu.Unlock()
			return
		}
		rs.backstop = nil
		d.slotsMu.Unlock()
		d.wakeParked(ctx, rs, false)
		d.slotsMu.Lock()
		if len(rs.parked) > 0 && ctx.Err() == nil {
			d.armBackstop(ctx, rs)
		}
		d.slotsMu.Unlock()
	})
	rs.backstop = t
}
