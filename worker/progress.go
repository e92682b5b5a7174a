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

// keeps reports whether this worker keeps a delivery of job id in progress that is not
// settled yet: it will start the job from it, requeue it, keep it for a full queue
// (park) or give it back, whatever its record says meanwhile. A keeper's mu is held
// while its tick is sent, which a stalled connection holds up to its write timeout: it
// is taken after keepMu is let go, so that such a send holds up only this look, not
// every other delivery's keeper starting or letting go.
func (w *Worker) keeps(id string) bool {
	var ks []*keeper
	w.keepMu.Lock()
	for d, k := range w.keepers {
		if d.JobID == id {
			ks = append(ks, k)
		}
	}
	w.keepMu.Unlock()
	for _, k := range ks {
		k.mu.Lock()
		settled := k.settled
		k.mu.Unlock()
		if !settled {
			return true
		}
	}
	return false
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
	// A refresh is a round trip to the store (a read, maybe a write), up to storeTimeout
	// long when the store is slow (a leader election, a disk that stalls): made here, it
	// held the ticks back that long, and with an ack wait under 45 s the delivery went to
	// another foreman, which ran the job a second time. It runs beside the ticks, one at a
	// time, and the keeper ends after it.
	var refreshing sync.WaitGroup
	defer refreshing.Wait()
	busy := make(chan struct{}, 1) // held by the refresh under way
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
			select {
			case busy <- struct{}{}:
			default:
				continue // the last one has not ended yet
			}
			refreshing.Go(func() {
				defer func() { <-busy }()
				w.refreshRecord(d.JobID, log)
			})
		case <-k.done:
			return
		}
	}
}

// refreshRecord offers the record of running job id to Store.Refresh, which rewrites it
// when it nears the job TTL.
func (w *Worker) refreshRecord(id string, log *slog.Logger) {
	if hook := w.cfg.beforeRefresh; hook != nil {
		hook(id)
	}
	ctx, cancel := w.storeCtx(context.Background())
	defer cancel()
	ok, err := w.store.Refresh(ctx, id)
	if err != nil {
		log.Warn("refresh running job record", "err", err)
	} else if ok {
		log.Debug("running job record refreshed before the job TTL")
	}
}
