package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

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
	log := w.log.With("seq", seq)
	err := w.endLimited(ctx, seq, deliveries, log)
	if err == nil {
		return
	}
	if !w.refusing(err) || w.isStopping(ctx) {
		log.Error("fail job past its delivery limit", "err", err)
		return
	}
	// JetStream tells of a job past its limit once and delivers it no more: given up here,
	// it would stay queued for nobody until its TTL. So the read and the write go on in the
	// background, pausing up to 30s, until stored or the worker stops.
	log.Error("fail job past its delivery limit; trying on while the store refuses", "err", err)
	w.bg.Add(1)
	go func() {
		defer w.bg.Done()
		for pause := w.cfg.RetryDelay; w.sleep(context.Background(), pause); pause = min(2*pause, 30*time.Second) {
			bctx, cancel := w.storeCtx(context.Background())
			err := w.endLimited(bctx, seq, deliveries, log)
			cancel()
			if err == nil || !w.refusing(err) {
				if err != nil {
					log.Error("fail job past its delivery limit", "err", err)
				}
				return
			}
		}
	}()
}

// endLimited fails the job whose queue message seq reached its delivery limit and removes
// the message. A message already gone (the job ended meanwhile) is no error.
func (w *Worker) endLimited(ctx context.Context, seq, deliveries uint64, log *slog.Logger) error {
	var (
		p   broker.Pending
		ok  bool
		err error
	)
	if fault := w.cfg.limitReadFault; fault != nil {
		err = fault(seq)
	}
	if err == nil {
		p, ok, err = w.store.Queued(ctx, seq)
	}
	if err != nil || !ok {
		return err
	}
	log = log.With("job_id", p.JobID, "model", modelOf(p.Token))
	if fault := w.cfg.endFault; fault != nil {
		if err := fault(p.JobID, broker.StateFailed); err != nil {
			return err
		}
	}
	_, err = w.transition(ctx, p.JobID, fromUnended, func(j *broker.Job) {
		j.State = broker.StateFailed
		j.Error = exhausted(j.Error, fmt.Sprintf("delivered %d times", deliveries))
	})
	if err != nil && !errors.Is(err, errEnded) && !errors.Is(err, broker.ErrNotFound) {
		return err
	}
	w.removeLimited(ctx, p, deliveries, log)
	return nil
}

// removeLimited removes the queue message p, and its stored request body, of a job that
// ended past its delivery limit.
func (w *Worker) removeLimited(ctx context.Context, p broker.Pending, deliveries uint64, log *slog.Logger) {
	if err := w.store.RemoveEnded(ctx, p); err != nil {
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
