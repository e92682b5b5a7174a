package worker

import (
	"context"
	"errors"
	"fmt"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// watchDeliveryLimit fails and removes every job JetStream gives up on, so none stays stuck
// (a job redelivered after crashes or hand-backs can reach MaxDeliver before the worker's
// own attempt limit).
func (w *Worker) watchDeliveryLimit(ctx context.Context) (stop func(), err error) {
	stop, err = w.store.OnDeliveryLimit(func(seq, deliveries uint64, err error) {
		if err != nil {
			w.log.Warn("bad delivery-limit advisory", "err", err)
			return
		}
		bctx, cancel := w.storeCtx(ctx)
		defer cancel()
		w.deliveryLimit(bctx, seq, deliveries)
	})
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	return stop, nil
}

func (w *Worker) deliveryLimit(ctx context.Context, seq, deliveries uint64) {
	p, ok, err := w.store.Queued(ctx, seq)
	if err != nil || !ok {
		if err != nil {
			w.log.Warn("delivery-limit advisory: read queue message", "seq", seq, "err", err)
		}
		return
	}
	log := w.log.With("job_id", p.JobID, "model", modelOf(p.Token))
	_, err = w.transition(ctx, p.JobID, fromUnended, func(j *broker.Job) {
		j.State = broker.StateFailed
		j.Error = exhausted(j.Error, fmt.Sprintf("delivered %d times", deliveries))
	})
	if err != nil && !errors.Is(err, errEnded) && !errors.Is(err, broker.ErrNotFound) {
		log.Error("fail job past its delivery limit", "err", err)
		return
	}
	if err := w.store.DeleteQueued(ctx, seq); err != nil {
		log.Warn("remove job past its delivery limit", "err", err)
		return
	}
	w.index.touch(p.Token)
	log.Warn("job failed: delivery limit reached", "deliveries", deliveries)
}

func modelOf(token string) string {
	k, _ := broker.ParseQueueKey(token)
	m, _ := broker.ModelFromToken(k.Model)
	return m
}
