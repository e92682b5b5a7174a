package worker

import (
	"context"
	"errors"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
)

// errNotWaiting stops the expiry of a job that is no longer waiting in the queue: it
// runs (its run ends it) or it ended.
var errNotWaiting = errors.New("job not waiting in the queue")

// fromWaiting: a job waiting in the queue, queued or retrying (an expiry).
func fromWaiting(j *broker.Job) error {
	if j.State != broker.StateQueued && j.State != broker.StateRetrying {
		return errNotWaiting
	}
	return nil
}

// holds reports whether this worker holds job id: its message taken, its run under way,
// or its result being stored.
func (w *Worker) holds(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.leased == id || w.finishing[id] || w.running != nil && w.running.id == id
}

// deadRun reports whether running record j (loading, working), written last at written,
// is no live run's: on a store of its own (the embedded server) one this worker does not
// hold; on a shared one, one older than a live run lets its record be (DeadRunAge). Such
// a record is left by a foreman killed mid-run whose job did not run again: on a store of
// its own behind an older job of its queue (ADR-0044 finds a cut job at its queue's
// head), on a shared one when no live foreman runs its model.
func (w *Worker) deadRun(j *broker.Job, written time.Time) bool {
	if j.State != broker.StateLoading && j.State != broker.StateWorking {
		return false
	}
	if w.store.Config().Exclusive {
		return !w.holds(j.ID)
	}
	return w.store.ServerNow().Sub(written) > w.store.DeadRunAge() && !w.holds(j.ID)
}

// expireLoop ends, every ExpireEvery until the worker stops, the jobs that have waited in
// the queue for about a job TTL (Store.StaleBefore): left alone, JetStream would drop
// their queue messages and records at the TTL and they would end nowhere. It runs beside
// the job loop, as a job may run longer than ExpireEvery; Run made the first look before
// it. A NATS outage fails every look: warned of once in looks, then once per
// failurelog.Every, and told once the look works again.
func (w *Worker) expireLoop(ctx context.Context, looks *expireLooks) {
	t := time.NewTicker(w.store.ExpireEvery())
	defer t.Stop()
	for {
		select {
		case <-w.stopping:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.expire(ctx, looks)
	}
}

// expireLooks logs the failures of expireLoop's two reads, each under its message.
type expireLooks struct {
	limits, stale failurelog.Loop
}

// The messages expireLooks logs under.
const (
	msgReadTTL   = "read the job TTL in force"
	msgLookStale = "look for jobs that waited a job TTL"
)

// expire fails the jobs waiting in the queue since before Store.StaleBefore and removes
// their queue messages and stored request bodies. Several foremen on one NATS may race to
// end one: the record's revision lets one write win. A stop ends it at once: its work
// waits for the next start. The reads' failures go to looks.
func (w *Worker) expire(ctx context.Context, looks *expireLooks) {
	ctx, stop := w.untilStop(ctx)
	defer stop()
	if hook := w.cfg.beforeExpiry; hook != nil {
		hook()
	}
	// Another foreman on a shared NATS may have raised the job TTL: judged by a shorter
	// one, its jobs would be ended early.
	if err := w.store.RefreshLimits(ctx); err == nil {
		looks.limits.Worked(w.log, msgReadTTL)
	} else if ctx.Err() == nil {
		looks.limits.Failed(w.log, msgReadTTL, err)
	}
	stale := w.store.StaleBefore()
	old, err := w.store.Stale(ctx, stale) // each read bounded; the whole ends with a stop
	if err == nil {
		looks.stale.Worked(w.log, msgLookStale)
	} else if ctx.Err() == nil {
		looks.stale.Failed(w.log, msgLookStale, err)
	}
	ttl := w.store.JobTTL()
	var ended []string
	// whole says every job that waited too long was ended (or runs, or had ended): only
	// then may a job TTL lowered since the last start be applied on the store, which drops
	// what is older than it (Store.ApplyJobTTL, ADR-0101).
	whole := err == nil
	look := newExpiryLook(old)
	for _, p := range old {
		if ctx.Err() != nil {
			whole = false
			break
		}
		if broker.ValidateID(p.JobID) != nil {
			continue // not a message foreman queued: the worker removes it when it meets it
		}
		log := w.log.With("job_id", p.JobID, "model", modelOf(p.Token))
		jctx, cancel := context.WithTimeout(ctx, storeTimeout)
		_, err := w.expireJob(jctx, p.JobID, p.Seq, ttl, look)
		if err == nil {
			ended = append(ended, p.JobID)
			err = w.store.RemoveEnded(jctx, p)
			w.index.touch(p.Token)
			log.Info("job failed: it waited in the queue for a job TTL", "enqueued", p.Enqueued)
			if err != nil {
				log.Warn("remove expired job from the queue", "err", err)
			}
		} else if !errors.Is(err, errNotWaiting) && !errors.Is(err, broker.ErrNotFound) {
			whole = false
			if ctx.Err() == nil {
				log.Warn("end a job that waited a job TTL", "err", err)
			}
		}
		cancel()
	}
	if hook := w.cfg.afterExpiry; hook != nil && ctx.Err() == nil {
		ids := make([]string, 0, len(old))
		for _, p := range old {
			ids = append(ids, p.JobID)
		}
		hook(ids)
	}
	if len(ended) > 0 {
		// One line for the operator, however many a long outage left behind.
		w.log.Warn("jobs failed: they waited in the queue for a job TTL", "jobs", len(ended), "first_job_id", ended[0], "job_ttl", ttl)
	}
	if whole && ctx.Err() == nil {
		if err := w.store.ApplyJobTTL(ctx); err != nil && ctx.Err() == nil {
			w.log.Warn("lower the job TTL on the store; tried again at the next look", "err", err)
		}
	}
}

// expireJob ends job id failed, its message (at stream sequence seq) having waited about
// a job TTL, if it waits in the queue or its record is a dead run's (deadRun): with its
// message gone at the TTL, nothing would end it, and it would vanish with its record. A
// job whose delivery this worker keeps unsettled (keeps) is not waiting, though its
// record may say queued or retrying: taken to run (its start write not stored yet),
// between a failed attempt's retrying write and its requeue or NAK, or kept for a full
// queue (park, ADR-0100), whose message is not renewed while kept and which at its due
// runs from its delivery, as in a queue with room its requeue would have run it
// (ADR-0123). Nor is one that another foreman may hold so (keptElsewhere): that one's
// expiry judges it. look is what the expiry look knows besides (expiryLook).
func (w *Worker) expireJob(ctx context.Context, id string, seq uint64, ttl time.Duration, look *expiryLook) (*broker.Job, error) {
	if w.isParked(id) || w.keeps(id) {
		return nil, errNotWaiting
	}
	cur, rev, written, err := w.store.GetWritten(ctx, id)
	if err != nil {
		return nil, err
	}
	if w.keptElsewhere(ctx, cur, seq, look) {
		return nil, errNotWaiting
	}
	dead := w.deadRun(cur, written)
	first := true
	j, _, err := w.store.ModifyFrom(ctx, cur, rev, func(j *broker.Job) error {
		// Only the record judged dead may be ended running; written again since, it is
		// judged anew at the next look.
		if err := fromWaiting(j); err != nil && !(first && dead) {
			return err
		}
		if w.isParked(j.ID) || w.keeps(j.ID) {
			return errNotWaiting // taken or kept since the look began (ADR-0123)
		}
		if !first && w.keptElsewhere(ctx, j, seq, look) {
			return errNotWaiting
		}
		first = false
		j.State = broker.StateFailed
		j.Error = broker.ExpiredError(ttl, j.Attempt)
		return nil
	})
	return j, err
}

// expiryLook is what one expiry look knows of the stale messages it judges: their
// sequences, and the presence of the runners their records name, read once per look:
// an outage's backlog may hold thousands of stale messages of one foreman's retries.
type expiryLook struct {
	stale   map[uint64]bool // the stale messages' stream sequences
	present map[string]bool // by boot id (keptElsewhere)
}

func newExpiryLook(old []broker.Pending) *expiryLook {
	l := &expiryLook{stale: make(map[uint64]bool, len(old)), present: map[string]bool{}}
	for _, p := range old {
		l.stale[p.Seq] = true
	}
	return l
}

// keptElsewhere reports whether waiting record j, whose queue message at seq is stale,
// is another present foreman's to judge on a shared NATS (ADR-0127): its last attempt
// ran on that foreman from this very message, or from another of the job's that this
// look found stale too (a spare copy, or the old message a requeue could not ack: a job
// is looked at only once all its messages are stale). The start write names the
// runner's boot id and the message, and a failed attempt's retrying write keeps both.
// That foreman may hold the delivery still, kept for a full queue or between its
// retrying write and its requeue, and only it knows; its own expiry ends the job if it
// does not. A presence that cannot be read counts as present: the next look reads it
// again. Each runner's presence is read once per look (look.present): one read for a
// runner of many stale jobs, and a presence that lapses during the look is judged at the
// next.
func (w *Worker) keptElsewhere(ctx context.Context, j *broker.Job, seq uint64, look *expiryLook) bool {
	if w.store.Config().Exclusive || fromWaiting(j) != nil {
		return false
	}
	boot := j.RunnerBoot
	if boot == "" || boot == w.store.BootID() || j.QueueSeq != seq && !look.stale[j.QueueSeq] {
		return false
	}
	if p, ok := look.present[boot]; ok {
		return p
	}
	if hook := w.cfg.beforePresence; hook != nil {
		hook(boot)
	}
	p := w.store.Present(ctx, boot)
	if ctx.Err() == nil { // not one job's time running out: the next job's read has its own
		look.present[boot] = p
	}
	return p
}
