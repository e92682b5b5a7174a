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
// So do the job's later events meanwhile, lane or not, so that they keep their order.

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
	jobs    int    // jobs with events spilled (Dispatcher.spilled)
	gen     uint64 // Dispatcher.spillSeq at the receiver's last spill
	claimed uint64 // Dispatcher.spillSeq when the last claim that read the store began
}

// spilledJob is a job with events spilled, held by no lane.
type spilledJob struct {
	receiver string // whose spill counts the job (counted), its first spilled event's
	counted  bool   // counted in spills[receiver]; not while only a failed entry holds it (holdFailedLocked)
	rev      uint64 // the latest event of the job spilled, or failed to read or adopt
	seq      uint64 // Dispatcher.spillSeq at its last spill
}

// The order of a job's events holds across a spill by one invariant: once a job has an
// event spilled, its later stored events spill too (whether or not the job has a lane)
// until a claim takes them up, in order (ADR-0022). Sent at once, a later one would go
// out first and the earlier one be superseded (ADR-0055), a state lost to the receiver
// for a fault of foreman's. Dispatcher.spilled names those jobs; enqueue spills their
// events, and a claim's resume, which queues a job's events in order, lets the job go
// once it queued its latest event spilled.

// spill leaves stored event e in the store; a claim's resume does. It wakes no claim:
// the claim running is the one that would, and it would find the store as it is.
// retake: e spilled for want of a lane (its job's earlier event did), and the next
// lane of its receiver freed may take it up; otherwise e waits behind its job's entry
// the claim failed to read or adopt, which only a later periodic claim can read.
func (d *Dispatcher) spill(e *event, retake bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.spillLocked(e, false, retake)
}

// spillLocked is spill; d.mu is held. e's job and receiver are marked as having events
// in the store until a claim takes them up. The job counts under the receiver of its
// first event spilled (resume gives "" to an entry it cannot decode); nudge wakes a claim
// if that receiver has room, retake lets a lane freed later do so (spill.gen).
func (d *Dispatcher) spillLocked(e *event, nudge, retake bool) {
	j := d.spilled[e.jobID]
	if !j.counted {
		j.receiver, j.counted = e.receiver, true
		s := d.spills[j.receiver]
		if s == nil {
			s = &spill{}
			d.spills[j.receiver] = s
		}
		s.jobs++
	}
	d.spillSeq++
	j.rev, j.seq = max(j.rev, e.rev), d.spillSeq
	d.spilled[e.jobID] = j
	if !retake {
		return
	}
	if s := d.spills[j.receiver]; s != nil {
		s.gen = d.spillSeq
	}
	if nudge {
		d.nudgeLocked(j.receiver)
	}
}

// holdFailedLocked marks job jobID as having events in the store up to revision rev: a
// claim failed to read or adopt its entry of rev (a transient error, or another foreman
// adopting it first). Its later events spill behind it until a claim queues it (or, no
// longer failing to, finds it gone), wherever they come from. It wakes no claim: one
// now would likely fail alike; the next periodic claim tries again. d.mu is held.
func (d *Dispatcher) holdFailedLocked(jobID string, rev uint64) {
	j := d.spilled[jobID]
	d.spillSeq++
	j.rev, j.seq = max(j.rev, rev), d.spillSeq
	d.spilled[jobID] = j
}

// takenUpLocked clears job jobID's spill: a claim queued its latest event spilled, or
// found its spilled events gone. d.mu is held.
func (d *Dispatcher) takenUpLocked(jobID string) {
	j, ok := d.spilled[jobID]
	if !ok {
		return
	}
	delete(d.spilled, jobID)
	if !j.counted {
		return
	}
	if s := d.spills[j.receiver]; s != nil {
		if s.jobs--; s.jobs <= 0 {
			delete(d.spills, j.receiver)
		}
	}
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
	if s == nil || s.gen <= s.claimed || d.held[receiver] > d.laneCap()/2 {
		return
	}
	select {
	case d.nudge <- struct{}{}:
	default: // one is due already
	}
}

// msgClaim is what claim's failures are logged under.
const msgClaim = "look for pending webhook deliveries of foremen that are gone"

// claim takes up the pending deliveries no lane holds: adopted from foremen that are
// gone, and this one's own spilled ones (resume leaves those beyond laneCap in the
// store again). A job stops counting as having events spilled once a claim queued its
// latest one spilled, or once a claim that began after its last spill did not find
// them (finished meanwhile: expired with the job; or adopted by another foreman), unless
// the claim failed to read or adopt one of the job's entries.
func (d *Dispatcher) claim(ctx context.Context) {
	d.mu.Lock()
	began := d.spillSeq
	d.mu.Unlock()
	claimed, failed, err := d.store.ClaimPendingDeliveries(ctx, d.holds)
	if err != nil {
		if ctx.Err() == nil {
			d.claims.Failed(d.log, msgClaim, err)
		}
		return
	}
	d.claims.Worked(d.log, msgClaim)
	if len(claimed) > 0 {
		d.log.Info("pending webhook deliveries taken up (adopted, or this foreman's own held by no lane)", "deliveries", len(claimed))
	}
	kept := d.resume(ctx, claimed, failed)
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range d.spills {
		s.claimed = max(s.claimed, began)
	}
	for id, j := range d.spilled {
		if _, ok := kept[id]; !ok && j.seq <= began {
			d.takenUpLocked(id)
		}
	}
}

// armBackstop starts rs's backstop unless it runs: after about busyPause it wakes the
// lane parked longest, and so on while any is parked (a lane woken that finds the
// receiver busy parks again, last). slotsMu is held.
func (d *Dispatcher) armBackstop(ctx context.Context, rs *receiverSlots) {
	if rs.backstop != nil || d.slotsClosed {
		return
	}
	wait := time.Duration(float64(d.cfg.busyPause) * (0.8 + 0.4*rand.Float64()))
	var t *time.Timer
	// The callback is the dispatcher's (d.wg): stop waits for one running. Armed from a
	// lane or from the callback itself, the count is above zero here.
	d.wg.Add(1)
	t = time.AfterFunc(wait, func() {
		defer d.wg.Done()
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

// stopBackstop stops rs's backstop; slotsMu is held. A callback stopped before it ran
// is counted out of d.wg here; one running already counts itself out.
func (d *Dispatcher) stopBackstop(rs *receiverSlots) {
	if rs.backstop == nil {
		return
	}
	if rs.backstop.Stop() {
		d.wg.Done()
	}
	rs.backstop = nil
}
