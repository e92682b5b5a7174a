package worker

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// keeper keeps one delivery in progress for its holders: a job's run, then the end that
// stores its terminal writes in the background (endLater). Sharing one keeper, the two
// hand over on the keeper's schedule of ticks, with no pause of it between them: a run
// that stopped its ticks before its last writes (the start's, the end's of a job that
// failed) left up to AckWait/3 plus those writes without one, and a store slow for that
// long let the delivery go to another worker while the job was still ending here.
type keeper struct {
	holders int           // guarded by Worker.keepMu
	done    chan struct{} // closed when the last holder lets go
	exited  chan struct{} // closed when the ticks have ended

	mu      sync.Mutex
	settled bool // the delivery was acked, NAKed or requeued: no tick may follow
}

// keepInProgress keeps delivery d in progress (an InProgress every AckWait/3) and its
// job's record from expiring (Store.Refresh), until release (which may be called again)
// has been called by it and every other holder of d, or until d is settled (settling):
// no tick goes out after that. (nats.go refuses an ack after a NAK, but checks before it
// publishes: a tick racing the NAK could go out after it and push its redelivery back.)
func (w *Worker) keepInProgress(d *broker.Lease, log *slog.Logger) (release func()) {
	w.keepMu.Lock()
	k := w.keepers[d]
	if k == nil {
		k = &keeper{done: make(chan struct{}), exited: make(chan struct{})}
		w.keepers[d] = k
		go w.keep(d, k, log)
	}
	k.holders++
	w.keepMu.Unlock()
	return sync.OnceFunc(func() {
		w.keepMu.Lock()
		k.holders--
		last := k.holders == 0
		if last {
			delete(w.keepers, d)
			close(k.done)
		}
		w.keepMu.Unlock()
		if last {
			<-k.exited
		}
	})
}

// settling marks delivery d settled before it is acked, NAKed or requeued: its keeper,
// if it has one, sends no tick from then on.
func (w *Worker) settling(d *broker.Lease) {
	w.keepMu.Lock()
	k := w.keepers[d]
	w.keepMu.Unlock()
	if k != nil {
		k.mu.Lock()
		k.settled = true
		k.mu.Unlock()
	}
}

// keep sends k's ticks for d until its last holder lets go or d is settled.
func (w *Worker) keep(d *broker.Lease, k *keeper, log *slog.Logger) {
	defer close(k.exited)
	t := time.NewTicker(max(w.store.Config().AckWait/3, 10*time.Millisecond))
	defer t.Stop()
	var refreshes <-chan time.Time // nil: never
	if every := w.store.RefreshEvery(); every > 0 {
		rt := time.NewTicker(every)
		defer rt.Stop()
		refreshes = rt.C
	}
	warned := false
	for {
		select {
		case <-t.C:
			k.mu.Lock()
			settled := k.settled
			var err error
			if !settled {
				// Sent under the lock: a settle marked after it is sent after it too.
				err = d.Msg.InProgress()
			}
			k.mu.Unlock()
			if settled {
				return
			}
			// Once per delivery: a failure here (the connection closed) repeats every tick.
			if err != nil && !warned {
				warned = true
				log.Warn("extend job ack deadline; further failures of this delivery not logged", "err", err)
			}
		case <-refreshes:
			ctx, cancel := w.storeCtx(context.Background())
			ok, err := w.store.Refresh(ctx, d.JobID)
			cancel()
			if err != nil {
				log.Warn("refresh running job record", "err", err)
			} else if ok {
				log.Debug("running job record refreshed before the job TTL")
			}
		case <-k.done:
			return
		}
	}
}
