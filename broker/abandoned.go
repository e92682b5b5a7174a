package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
)

// CallerGoneReason is the Error of a sync job canceled because the process whose gateway
// held its caller's connection is gone.
const CallerGoneReason = "caller gone: foreman restarted"

// UnqueuedReason is the Error of a job whose submit was cut between its two writes (its
// foreman stopped, or the store refused the queue message and the record's take-back)
// and which no retry can queue (no Idempotency-Key, or its key's claim names it no
// more): its record was stored, its queue message never was, and no 202 named it (the
// caller got none, or a refusal). No retry can queue it (only a key
// names a job again), so nothing would ever run it.
const UnqueuedReason = "lost: its submit was cut short before its queue message was stored (foreman stopped, or the store refused it), so it never reached the queue, and no answer of foreman's named it as queued: submit it again"

// CallerGone reports whether sync job j has lost its caller: the foreman process whose
// gateway took the call (j.Gateway, a boot id) no longer runs. It is the one place that
// decides it. On a store owned exclusively (the embedded server) one process uses it, so
// every boot id but ours is a dead process. On a shared NATS a process runs while its key
// is in the presence bucket (Announce); one that died without a word drops out
// PresenceTTL after its last heartbeat. Async jobs and records from before boot ids never
// lose their caller.
func (s *Store) CallerGone(ctx context.Context, j *Job) bool {
	return s.CallerGoneAt(ctx, j, time.Time{})
}

// CallerGoneAt is CallerGone for a sync job whose queue message its gateway published at
// sent, on the NATS server's clock (Lease.GatewaySent; zero when not known). That gateway
// was alive then: less than a PresenceTTL later its caller is not gone though its
// presence lapsed, unless it withdrew it since (it stopped in order). A foreman whose
// presence lapsed while the store took no writes (a cluster without a quorum) takes
// calls again as soon as the store is back, before its next heartbeat lands; the other
// foremen canceled each of those fresh jobs.
func (s *Store) CallerGoneAt(ctx context.Context, j *Job, sent time.Time) bool {
	if !j.Sync || j.Gateway == "" || j.Gateway == s.cfg.BootID {
		return false
	}
	if s.cfg.Exclusive {
		return true
	}
	present, withdrawn := s.presenceOf(ctx, j.Gateway)
	if present {
		return false
	}
	return withdrawn || sent.IsZero() || s.ServerNow().Sub(sent) >= s.cfg.PresenceTTL
}

// GatewaySent is when the gateway of sync job d published its queue message, on the
// server's clock (CallerGoneAt); zero for a message another process published again
// (Requeue), whose stamp says nothing of the gateway, and for an async job.
func (d *Lease) GatewaySent() time.Time {
	if d.Requeued || d.Gateway == "" {
		return time.Time{}
	}
	return d.Enqueued
}

// RunnerGone reports whether running job j (loading or working) was cut short by the
// death of the foreman whose worker ran it: that foreman's presence lapsed (ADR-0064).
// Its queue message comes back after the ack wait, to a worker whose target has its
// model. A record that names no runner for its attempt (from before runners were named,
// or started by such a foreman), this process's own, one on a store of this process's own (whatever runs there is this process's), or
// one whose runner's presence cannot be read is not gone: only evidence says so.
func (s *Store) RunnerGone(ctx context.Context, j *Job) bool {
	if j.State != StateLoading && j.State != StateWorking {
		return false
	}
	_, boot := j.CurrentRunner()
	if boot == "" || boot == s.cfg.BootID || s.cfg.Exclusive {
		return false
	}
	return !s.present(ctx, boot)
}

// CallerHere reports whether sync job j's caller waits on this process's gateway. Such a
// job does not run again once this process stops: its shutdown cancels it, and a later
// delivery finds its caller gone (CallerGone).
func (s *Store) CallerHere(j *Job) bool {
	return j.Sync && j.Gateway != "" && j.Gateway == s.cfg.BootID
}

// HandBackDelay is how long a job that this process hands back as it stops stays out of
// the queue. On a shared NATS a sync job whose caller waits on this process must not go
// to another foreman while this one's presence stands: CallerGone would say its caller
// lives, and it would run for nobody. Meanwhile this process's shutdown cancels it (its
// caller is answered); should the process die first, its presence lapses PresenceTTL
// after its last heartbeat, which the shutdown's last steps (seconds, well within a
// PresenceTTL) may still send, and the job's next delivery cancels it unrun. Other
// jobs, and every job on a store of its own (no other process takes them), go back at
// once.
func (s *Store) HandBackDelay(d *Lease) time.Duration {
	if s.cfg.Exclusive || d.Gateway == "" || d.Gateway != s.cfg.BootID {
		return 0
	}
	return 2 * s.cfg.PresenceTTL
}

// CancelAbandoned cancels every queued sync job whose caller is gone (CallerGone), so
// that they neither run nor count in the queue, and returns how many it canceled. A
// queued one ends canceled and leaves the queue at once; one that was running when its
// foreman died gets its cancellation requested, which the worker carries out when the
// job is delivered, without running it; on an exclusive store one whose queue message
// was never written ends canceled too. Async jobs are untouched.
func (s *Store) CancelAbandoned(ctx context.Context) (int, error) {
	n := 0
	inQueue := map[string]bool{}
	var cancelErr error
	err := s.readQueue(ctx, 0, 0, func(m *jetstream.RawStreamMsg) error {
		seq := m.Sequence
		id := m.Header.Get(HeaderJobID)
		inQueue[id] = true
		gw := m.Header.Get(HeaderGateway)
		if gw == "" || gw == s.cfg.BootID {
			return nil
		}
		var sent time.Time
		if m.Header.Get(HeaderRequeued) == "" {
			sent = m.Time
		}
		j, _, err := s.Get(ctx, id)
		if err != nil || !s.CallerGoneAt(ctx, j, sent) {
			return nil // no record (the worker drops the message) or a live caller
		}
		_, err = s.cancel(ctx, id, CallerGoneReason, func(ctx context.Context, j *Job) error {
			err := s.deleteQueueMsg(ctx, seq)
			if err == nil {
				s.dropBody(ctx, j)
			}
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return nil
			}
			return err
		})
		switch {
		case err == nil:
			n++
		case errors.Is(err, ErrTerminal), errors.Is(err, ErrNotFound):
		default:
			cancelErr = err
			return err
		}
		return nil
	})
	if cancelErr != nil {
		return n, cancelErr
	}
	if err != nil {
		return n, fmt.Errorf("broker: scan queue: %w", err)
	}
	if !s.cfg.Exclusive {
		return n, nil
	}
	m, err := s.cancelUnqueued(ctx, inQueue)
	return n + m, err
}

// cancelUnqueued cancels the sync jobs of dead callers whose record says queued but whose
// queue message was never written: their foreman died between the two writes of Submit.
// Nothing else would ever end them. Only on an exclusive store, where no other process
// can be between those writes now, and only for records older than this store. Async
// ones submitted with an Idempotency-Key stay queued while their key's claim names them:
// a submit retried with that key queues them; one without a key, or whose claim is gone
// (released by its failed submit, aged out) or names another job, can never be queued
// again and ends failed (failUnqueued). One retrying, or running when the last process
// died, without a queue message ends failed too (failMessageGone): no submit's retry
// queues it, and nothing else would run it. When the queue may have lost messages to a
// damaged data directory (queueSuspect), every job that waits without a queue message
// ends failed (failLost) with that reason.
func (s *Store) cancelUnqueued(ctx context.Context, inQueue map[string]bool) (int, error) {
	keys, err := s.bucketKeys(ctx, JobsBucket, "job.*")
	if err != nil {
		return 0, fmt.Errorf("broker: list jobs: %w", err)
	}
	var ids []string
	for _, k := range keys {
		id := strings.TrimPrefix(k, "job.")
		u, err := ulid.ParseStrict(id)
		if err != nil || inQueue[id] || !ulid.Time(u.Time()).Before(s.started) {
			continue
		}
		ids = append(ids, id)
	}
	n := 0
	for _, id := range ids {
		j, _, err := s.Get(ctx, id)
		if err != nil || j.State.Terminal() {
			continue
		}
		if j.State != StateQueued || !s.CallerGone(ctx, j) {
			switch {
			case s.queueSuspect != "":
				if err := s.failLost(ctx, j); err != nil {
					return n, err
				}
			case j.State == StateQueued && !s.retryMayQueue(ctx, j):
				if err := s.failUnqueued(ctx, j); err != nil {
					return n, err
				}
			case j.State != StateQueued:
				if err := s.failMessageGone(ctx, j); err != nil {
					return n, err
				}
			}
			continue
		}
		_, err = s.cancel(ctx, id, CallerGoneReason, func(ctx context.Context, j *Job) error {
			s.dropBody(ctx, j) // the queue has nothing of it
			return nil
		})
		switch {
		case err == nil:
			n++
		case errors.Is(err, ErrTerminal), errors.Is(err, ErrNotFound):
		default:
			return n, err
		}
	}
	return n, nil
}

// MessageGoneReason is the Error of a job that was retrying, or running, when its
// foreman stopped without handing it back, and whose queue message was gone at the next
// start: JetStream drops a queue message at the job TTL's age (the queue's MaxAge), even
// one a worker holds (a run that outlived it, a retry's kept delivery, ADR-0100), and
// nothing else would run the job again.
const MessageGoneReason = "lost: its queue message was gone when foreman started again (the queue drops a message at the job TTL's age, even one a run or a retry held when foreman stopped), so nothing would run it: submit it again"

// failMessageGone ends job j, retrying or running when the last process on this store
// of its own died, and without a queue message, failed (MessageGoneReason): the reclaim
// delivers only messages, the expiry (ADR-0043) looks only at messages, and a submit's
// retry queues only a queued job, so it was listed as waiting, never to run, until its
// record's TTL dropped it. Its webhook, if it named one, is told the end.
func (s *Store) failMessageGone(ctx context.Context, j *Job) error {
	was := j.State
	_, _, err := s.Modify(ctx, j.ID, func(j *Job) error {
		if j.State == StateQueued || j.State.Terminal() {
			return fmt.Errorf("%w: job %s is %s", ErrTerminal, j.ID, j.State) // written since: left as it is
		}
		j.State, j.Error = StateFailed, MessageGoneReason
		return nil
	})
	switch {
	case err == nil:
		s.dropBody(ctx, j)
		s.log.Warn("job without a queue message at the start ended failed; nothing would run it",
			"job_id", j.ID, "model", j.Model, "was", was)
	case errors.Is(err, ErrTerminal), errors.Is(err, ErrNotFound):
	default:
		return fmt.Errorf("broker: end job %s without a queue message: %w", j.ID, err)
	}
	return nil
}

// retryMayQueue reports whether a submit retried with queued job j's Idempotency-Key
// may still queue it: the key's claim names j. Only that claim leads a retry to j
// (Resubmit). A claim released by j's failed submit (whose take-back of the record the
// store refused too), aged out, or since taken by another request's job leads none
// there, and a claim is never made to name an existing job again. A claim that cannot
// be read is taken to name j: only evidence ends a job.
func (s *Store) retryMayQueue(ctx context.Context, j *Job) bool {
	if j.Idempotency == "" {
		return false
	}
	e, err := s.kvGet(ctx, idemPrefix+j.Idempotency)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return false
	}
	if err != nil {
		return true
	}
	c, err := decodeClaim(e)
	return err != nil || c.JobID == j.ID
}

// failUnqueued ends queued job j, which has no queue message and which no retry can
// queue (submitted without an Idempotency-Key, or its key's claim names it no more:
// retryMayQueue), failed (UnqueuedReason): a retry with its key is the only way a job
// is queued again, and without one it would be listed queued, never to run, until the
// job TTL. No 202 named it (a 202 means both writes are on disk): its caller got no
// answer, or a refusal; a webhook it named is told the end.
func (s *Store) failUnqueued(ctx context.Context, j *Job) error {
	_, _, err := s.Modify(ctx, j.ID, func(j *Job) error {
		if j.State != StateQueued {
			return fmt.Errorf("%w: job %s is %s", ErrTerminal, j.ID, j.State) // written since: left as it is
		}
		j.State, j.Error = StateFailed, UnqueuedReason
		return nil
	})
	switch {
	case err == nil:
		s.dropBody(ctx, j)
		s.log.Warn("job whose submit was cut short before its queue message was stored ended failed; no answer of foreman's named it as queued",
			"job_id", j.ID, "model", j.Model)
	case errors.Is(err, ErrTerminal), errors.Is(err, ErrNotFound):
	default:
		return fmt.Errorf("broker: end unqueued job %s: %w", j.ID, err)
	}
	return nil
}

// reclaim makes the jobs that a previous process had taken and not finished deliverable
// at once. Only for an exclusively owned store: that process is dead (the data-dir lock
// says so), so waiting out AckWait for it would only hold the jobs back. A reset consumer
// delivers again from its ack floor; the attempts a job has had are counted in its
// record, so nothing is lost by restarting the delivery count.
//
// The server does not recover every consumer it has on disk: one whose directory lacks
// its checksum file (a kill between the two files it writes when it creates a consumer)
// is skipped with a warning, and is listed by nobody. Created again, it takes up the
// state left in its directory, taken jobs included, and keeps lacking the checksum. So
// the queue keys with jobs whose consumer the server did not list are noted (unlisted),
// and the first create of each consumer that finds a previous state in it makes it
// afresh (renew) before the worker fetches from it.
//
// A queue message may also sit below its consumer's ack floor: a stream that failed a
// write (a full disk) removes nothing more until the server restarts, so a job finished
// and acked meanwhile moved the ack floor past a message that stayed. No consumer would
// deliver it again, while it counts as waiting (the queue view, its depth, the queue
// bound) until the job TTL. A consumer whose key holds more messages than it has pending
// is made afresh too, delivering them again; the worker drops those of ended jobs.
func (s *Store) reclaim(ctx context.Context) error {
	depth, _, err := s.DepthState(ctx)
	if err != nil {
		return err
	}
	recovered := map[string]bool{}
	var stranded []string
	names := s.queue.ConsumerNames(ctx)
	for name := range names.Name() {
		recovered[name] = true
		info, err := s.js.Consumer(ctx, QueueStream, name)
		if err != nil {
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				continue
			}
			return fmt.Errorf("broker: consumer %s: %w", name, err)
		}
		ci := info.CachedInfo()
		if token, ok := TokenFromSubject(ci.Config.FilterSubject); ok && TokenValid(token) && ConsumerName(token) == name &&
			depth[token] > ci.NumPending+uint64(max(ci.NumAckPending, 0)) {
			s.log.Warn("queue messages left below their consumer's ack floor (a write the store failed); delivered again",
				"consumer", name, "messages", depth[token]-ci.NumPending-uint64(max(ci.NumAckPending, 0)))
			stranded = append(stranded, token)
			continue
		}
		if ci.NumAckPending == 0 {
			continue
		}
		if _, err := s.js.ResetConsumer(ctx, QueueStream, name); err != nil {
			return fmt.Errorf("broker: reset consumer %s: %w", name, err)
		}
		s.log.Info("jobs of the previous process made deliverable", "consumer", name, "jobs", ci.NumAckPending)
	}
	if err := names.Err(); err != nil {
		return fmt.Errorf("broker: list queue consumers: %w", err)
	}
	for _, token := range stranded {
		if err := s.renew(ctx, token); err != nil {
			return err
		}
	}
	// The keys with jobs and no consumer listed: most never had one (a consumer is made
	// at its key's first fetch, and a backlog of many programs and models has hundreds of
	// keys never fetched from), a few may have one the server skipped. Neither is made
	// here, three requests a key at every start: the first create of each (consumer)
	// tells them apart and makes afresh only one that took up a previous state.
	unlisted := map[string]bool{}
	for token := range depth {
		if TokenValid(token) && !recovered[ConsumerName(token)] {
			unlisted[token] = true
		}
	}
	s.mu.Lock()
	s.unlisted = unlisted
	s.mu.Unlock()
	return s.reclaimChanges(ctx)
}

// reclaimChanges makes the job changes a previous process had taken from the job
// records' stream and not acked (the webhook dispatcher's events, taken and not yet
// stored as pending deliveries) deliverable at once, as reclaim does for the queue's
// jobs: that process is dead, and each would otherwise wait out the consumer's ack wait
// (60 s) before its webhook went out. A change delivered twice is harmless: its pending
// delivery is created once (AddPendingDelivery), and one sent already is found in its
// job's delivery log.
func (s *Store) reclaimChanges(ctx context.Context) error {
	names := s.jobs.ConsumerNames(ctx)
	for name := range names.Name() {
		info, err := s.js.Consumer(ctx, jobsStream, name)
		if err != nil {
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				continue
			}
			return fmt.Errorf("broker: consumer %s of %s: %w", name, jobsStream, err)
		}
		ci := info.CachedInfo()
		if ci.Config.Durable == "" || ci.NumAckPending == 0 {
			continue
		}
		if _, err := s.js.ResetConsumer(ctx, jobsStream, name); err != nil {
			return fmt.Errorf("broker: reset consumer %s of %s: %w", name, jobsStream, err)
		}
		s.log.Info("job changes the previous process had taken made deliverable", "consumer", name, "changes", ci.NumAckPending)
	}
	if err := names.Err(); err != nil {
		return fmt.Errorf("broker: list consumers of %s: %w", jobsStream, err)
	}
	return nil
}

// renew makes the consumer of queue key token afresh: created (which takes up whatever
// an unrecovered consumer of that name left on disk), deleted with its directory, and
// created again, delivering every job of the key from the start. On a work queue the
// delete leaves the jobs in the stream. (A key the server did not list is made afresh by
// its first create instead, only when that found a previous state: consumer.)
func (s *Store) renew(ctx context.Context, token string) error {
	name := ConsumerName(token)
	c, err := s.consumer(ctx, token)
	if err != nil {
		return err
	}
	held := c.CachedInfo().NumAckPending
	s.forget(token)
	if err := s.queue.DeleteConsumer(ctx, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("broker: delete consumer %s: %w", name, err)
	}
	if _, err := s.consumer(ctx, token); err != nil {
		return err
	}
	if held > 0 {
		s.log.Info("jobs of the previous process made deliverable", "consumer", name, "jobs", held, "recovered", false)
	}
	return nil
}
