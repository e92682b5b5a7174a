package worker

import (
	"context"
	"fmt"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// unknownKind settles the delivery of a job whose kind this foreman does not know
// (broker.ErrUnknownKind, ADR-0061): a newer foreman on the same NATS queued it. Removed,
// its record would stay queued until the job TTL, with no end and no webhook. So it goes
// back to the queue, out of it a while (a retry's delay, growing with its deliveries),
// for a foreman that knows the kind to take; no attempt is counted, as none ran, though
// the delivery counts against MaxDeliver (the queue consumers are shared). On the
// last delivery JetStream makes (this foreman's MaxDeliver), or at once on a store of
// its own (no other foreman there: the one that queued it was replaced by an older
// one), the job ends failed with a word of why. A job that is not to run (an orphan, an
// ended or canceled job, a gone caller) is settled as any delivery of it is (admit).
func (w *Worker) unknownKind(ctx context.Context, d *broker.Lease) {
	log := w.log.With("job_id", d.JobID, "model", d.Model, "kind", d.Kind)
	w.settleAdmitted(ctx, d, log, func(bctx context.Context, j *broker.Job) {
		fail := func(why string) {
			w.fail(bctx, d, j.Sync, w.store.StreamWriter(d.JobID), fmt.Sprintf("job kind %q is unknown to this foreman: ", d.Kind)+why, 0, log)
		}
		delay := w.cfg.retryDelay(int(d.NumDelivered))
		switch {
		case w.store.Config().Exclusive:
			fail("it is older than the foreman that queued the job (a downgrade)")
		case d.NumDelivered >= uint64(w.store.Config().MaxDeliver()):
			fail(fmt.Sprintf("a foreman on this NATS is older than the one that queued the job, and none that knows the kind took it in %d deliveries", d.NumDelivered))
		case w.store.OutlivesQueue(d, delay):
			// Its message may be gone before it comes back: put back, it would be queued
			// anew (Requeue), from this delivery, whose stored body was never read, and
			// its delivery count would start again.
			fail("a foreman on this NATS is older than the one that queued the job, and none that knows the kind took it before the job TTL")
		default:
			log.Warn("job of a kind this foreman does not know handed back for a newer foreman",
				"delivered", d.NumDelivered, "delay", delay)
			// Not nak: this foreman's loop is not to look for it when the delay ends, or
			// it would take it again before the others, which look at their IdlePoll.
			w.putBack(d, delay, log)
		}
	})
}
