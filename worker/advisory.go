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
	w.goBackground(func() {
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
	})
}

// goBackground runs fn on a goroutine of Run's background work (bg), unless Run has
// stopped waiting for it: the worker has stopped then, and fn would outlive Run. Counted
// after Run's wait had begun, it would misuse the WaitGroup (a Wait woken as the count
// rose again panics). For goroutines other than Run's own.
func (w *Worker) goBackground(fn func()) {
	w.bgMu.Lock()
	defer w.bgMu.Unlock()
	if w.bgShut {
		return
	}
	w.bg.Add(1)
	go func() {
		defer w.bg.Done()
		fn()
	}()
}

// waitBackground waits for Run's background work; none starts from then on.
func (w *Worker) waitBackground() {
	w.bgMu.Lock()
	w.bgShut = true
	w.bgMu.Unlock()
	w.bg.Wait()
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
