package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// A later foreman may queue jobs under a queue key this one cannot read: a class or a
// dimension of the key it does not know (broker.LaterQueueKey). The pick took such a
// subject for one of no model and purged it, and with its messages the jobs: their
// records stayed queued with nothing behind them, no answer and no webhook until the job
// TTL dropped them. Now they are left out of the pick (ADR-0099):
//   - on a shared NATS they are left in the queue for a foreman that reads the key (the
//     one that queued them, or one like it); the expiry ends them at the job TTL should
//     none ever take them;
//   - on a store of its own no other foreman exists: a later one queued them and was
//     replaced by this one (a downgrade), so each ends failed at once, saying so.
// A message there that is no job's (no valid job id, no record past the record's grace,
// another model's job) is removed, and one of an ended job too, as the pick always did.

// laterKeys leaves the heads of later foremen's queue keys out of the pick, and settles
// the jobs of such a queue (settleLaterKey) when its head changed since the last look:
// those queued since (from on), the ones left before staying left.
func (w *Worker) laterKeys(ctx context.Context, heads []head) []head {
	var out []head           // a copy, made once a head is left out
	var seen map[string]bool // made then too: a pick without later keys allocates nothing
	for i, h := range heads {
		if !broker.LaterQueueKey(h.Token) {
			if out != nil {
				out = append(out, h)
			}
			continue
		}
		if out == nil {
			out = append(make([]head, 0, len(heads)), heads[:i]...)
			seen = map[string]bool{}
		}
		seen[h.Token] = true
		look := w.laterLooks[h.Token]
		if look.head == h.Seq && (look.whole || time.Since(look.at) < laterRelook) {
			// Looked at already, and nothing taken from it since; one that left messages
			// unsettled (a record that does not decode, a read that failed) is looked at
			// again after laterRelook, not at every pick, warning again each time.
			continue
		}
		from, whole := w.settleLaterKey(ctx, h.Token, look.from)
		w.laterLooks[h.Token] = laterLook{head: h.Seq, from: from, whole: whole, at: time.Now()}
	}
	for token := range w.laterLooks {
		if !seen[token] {
			delete(w.laterLooks, token)
		}
	}
	if out == nil {
		return heads
	}
	return out
}

// laterLook is the last look at a later foreman's queue key: its head then, the first
// message not settled for good (looked at again by the next look), and whether every
// message was (none is to be looked at again while the head stays), and when it was made.
type laterLook struct {
	head, from uint64
	whole      bool
	at         time.Time
}

// laterRelook is how long a later foreman's queue key whose look left messages unsettled
// waits for the next look while its head stays.
const laterRelook = 10 * time.Second

// settleLaterKey looks at the messages of later queue key token from sequence from on,
// and returns the first one it could not settle for good (a read that failed, a record
// on its way), or the one after the last: where the next look starts; whole when it
// settled every one.
func (w *Worker) settleLaterKey(ctx context.Context, token string, from uint64) (next uint64, whole bool) {
	bctx, cancel := w.storeCtx(ctx)
	defer cancel()
	subject := broker.QueueSubject(token)
	model, _, _ := strings.Cut(token, ".")
	var left, ended, removed int
	next, settled := from, true // settled: every message before next was
	for {
		p, ok, err := w.store.OldestOfFrom(bctx, token, from)
		if err != nil {
			w.log.Warn("read the queue of a later foreman's queue key", "subject", subject, "err", err)
			settled = false
			break
		}
		if !ok {
			break
		}
		from = p.Seq + 1
		switch w.settleLaterJob(bctx, p, model, subject) {
		case laterLeft:
			left++
		case laterEnded:
			ended++
		case laterRemoved:
			removed++
		case laterUnread:
			settled = false
		}
		if settled {
			next = from
		}
	}
	if ended+removed > 0 {
		w.index.touch(token)
	}
	if removed > 0 {
		w.log.Warn("queue messages of no job removed from a later foreman's queue key", "subject", subject, "messages", removed)
	}
	if ended > 0 {
		w.log.Warn("jobs queued by a later foreman under a queue key this foreman cannot read ended failed (a downgrade)",
			"subject", subject, "jobs", ended)
	}
	if left > 0 {
		w.log.Warn("jobs queued by a later foreman under a queue key this foreman cannot read left for a foreman that reads it",
			"subject", subject, "jobs", left)
	}
	return next, settled
}

// What settleLaterJob did with a message.
const (
	laterLeft = iota
	laterEnded
	laterRemoved
	laterUnread // not settled now (a read or write failed, a record on its way): looked at again
)

// settleLaterJob settles message p of a later foreman's queue key, whose model token is
// model: see the comment at the top of this file.
func (w *Worker) settleLaterJob(ctx context.Context, p broker.Pending, model, subject string) int {
	log := w.log.With("job_id", p.JobID, "subject", subject)
	remove := func(ended bool) int {
		var err error
		if ended {
			err = w.store.RemoveEnded(ctx, p)
		} else {
			err = w.store.DeleteQueued(ctx, p.Seq)
		}
		if err != nil {
			log.Warn("remove queue message of a later foreman's queue key", "err", err)
			return laterUnread
		}
		return laterRemoved
	}
	if broker.ValidateID(p.JobID) != nil {
		return remove(false)
	}
	j, _, err := w.store.Get(ctx, p.JobID)
	switch {
	case errors.Is(err, broker.ErrNotFound):
		if w.serverNow().Sub(p.Enqueued) < w.store.RecordGrace() {
			return laterUnread // its record may be on its way (Submit writes both at once)
		}
		return remove(false)
	case err != nil:
		log.Warn("read the record of a job of a later foreman's queue key", "err", err)
		return laterUnread
	case !broker.ModelOnToken(j.Model, model):
		return remove(false) // another model's job: not its message
	case j.State.Terminal():
		return remove(true)
	case !w.store.Config().Exclusive:
		return laterLeft
	}
	why := fmt.Sprintf("queued under %s, a queue key this foreman cannot read: it is older than the foreman that queued the job (a downgrade)", subject)
	_, err = w.transition(ctx, p.JobID, fromUnended, func(j *broker.Job) {
		if j.CancelRequested != "" {
			j.State, j.Error = broker.StateCanceled, j.CancelRequested
			return
		}
		j.State, j.Error = broker.StateFailed, why
	})
	switch {
	case errors.Is(err, broker.ErrIllegalTransition):
		// A state of the later foreman's too: not this one's to end. The expiry does
		// not end it either; JetStream drops it at the job TTL.
		log.Warn("job of a later foreman's queue key in a state this foreman cannot end; left", "err", err)
		return laterLeft
	case errors.Is(err, errEnded), errors.Is(err, broker.ErrNotFound):
		return remove(true) // ended meanwhile, or gone
	case err != nil:
		log.Warn("end a job of a later foreman's queue key", "err", err)
		return laterUnread
	}
	if remove(true) == laterUnread {
		return laterUnread
	}
	return laterEnded
}
