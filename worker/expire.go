package worker

import (
	"context"
	"errors"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
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

// expireLoop ends, every ExpireEvery until the worker stops, the jobs that have waited in
// the queue for about a job TTL (Store.StaleBefore): left alone, JetStream would drop
// their queue messages and records at the TTL and they would end nowhere. It runs beside
// the job loop, as a job may run longer than ExpireEvery.
func (w *Worker) expireLoop(ctx context.Context) {
	t := time.NewTicker(w.store.ExpireEvery())
	defer t.Stop()
	for {
		w.expire(ctx)
		select {
		case <-w.stopping:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// expire fails the jobs waiting in the queue since before Store.StaleBefore and removes
// their queue messages. Several foremen on one NATS may race to end one: the record's
// revision lets one write win.
func (w *Worker) expire(ctx context.Context) {
	sctx, cancel := w.storeCtx(ctx)
	stale, err := w.store.Stale(sctx, w.store.StaleBefore())
	cancel()
	if err != nil {
		w.log.Warn("look for jobs that waited a job TTL", "err", err)
	}
	reason := broker.ExpiredError(w.store.Config().JobTTL)
	for _, p := range stale {
		if w.isStopping(ctx) {
			return
		}
		if broker.ValidateID(p.JobID) != nil {
			continue // not a message foreman queued: the worker removes it when it meets it
		}
		log := w.log.With("job_id", p.JobID, "model", modelOf(p.Token))
		jctx, cancel := w.storeCtx(ctx)
		_, err := w.transition(jctx, p.JobID, fromWaiting, func(j *broker.Job) {
			j.State = broker.StateFailed
			j.Error = reason
		})
		if err == nil {
			err = w.store.DeleteQueued(jctx, p.Seq)
			w.index.touch(p.Token)
			log.Warn("job failed: it waited in the queue for a job TTL without starting", "enqueued", p.Enqueued)
			if err != nil {
				log.Warn("remove expired job from the queue", "err", err)
			}
		} else if !errors.Is(err, errNotWaiting) && !errors.Is(err, broker.ErrNotFound) {
			log.Warn("end a job that waited a job TTL", "err", err)
		}
		cancel()
	}
}
