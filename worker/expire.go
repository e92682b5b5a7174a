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
// revision lets one write win. A stop ends it at once: its work waits for the next start.
func (w *Worker) expire(ctx context.Context) {
	ctx, stop := w.untilStop(ctx)
	defer stop()
	stale := w.store.StaleBefore()
	old, err := w.store.Stale(ctx, stale) // each read bounded; the whole ends with a stop
	if err != nil && ctx.Err() == nil {
		w.log.Warn("look for jobs that waited a job TTL", "err", err)
	}
	ttl := w.store.Config().JobTTL
	var ended []string
	for _, p := range old {
		if ctx.Err() != nil {
			break
		}
		if broker.ValidateID(p.JobID) != nil {
			continue // not a message foreman queued: the worker removes it when it meets it
		}
		log := w.log.With("job_id", p.JobID, "model", modelOf(p.Token))
		jctx, cancel := context.WithTimeout(ctx, storeTimeout)
		_, err := w.transition(jctx, p.JobID, fromWaiting, func(j *broker.Job) {
			j.State = broker.StateFailed
			j.Error = broker.ExpiredError(ttl, j.Attempt)
		})
		if err == nil {
			ended = append(ended, p.JobID)
			err = w.store.DeleteQueued(jctx, p.Seq)
			w.index.touch(p.Token)
			log.Info("job failed: it waited in the queue for a job TTL", "enqueued", p.Enqueued)
			if err != nil {
				log.Warn("remove expired job from the queue", "err", err)
			}
		} else if !errors.Is(err, errNotWaiting) && !errors.Is(err, broker.ErrNotFound) && ctx.Err() == nil {
			log.Warn("end a job that waited a job TTL", "err", err)
		}
		cancel()
	}
	if len(ended) > 0 {
		// One line for the operator, however many a long outage left behind.
		w.log.Warn("jobs failed: they waited in the queue for a job TTL", "jobs", len(ended), "first_job_id", ended[0], "job_ttl", ttl)
	}
}
