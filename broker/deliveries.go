package broker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// RedeliverSubject asks the webhook dispatcher (request/reply, in-process only: NATS
// clients may not publish here) to send a job's latest state event its webhook wants
// again. The request data is the job id; the reply is {"webhook_id":"..."} or
// {"error":"..."}.
const RedeliverSubject = "foreman.internal.webhooks.redeliver"

// Delivery outcomes recorded per attempt.
const (
	OutcomeDelivered = "delivered" // 2xx
	OutcomeRetry     = "retry"     // failed, will be tried again
	OutcomeFailed    = "failed"    // failed, attempts exhausted
	OutcomeGone      = "gone"      // 410: the receiver wants no more events of this job
	OutcomeRefused   = "refused"   // the webhook network policy refuses the address; not retried
	// OutcomeSuperseded is an event not sent: a later event of its job went out first
	// (ADR-0055). Its Attempt counts the attempts made before.
	OutcomeSuperseded = "superseded"
)

// DeliveryAttempt is one webhook delivery attempt in a job's delivery log.
type DeliveryAttempt struct {
	WebhookID string    `json:"webhook_id"`
	State     State     `json:"state"`
	Attempt   int       `json:"attempt"`
	URL       string    `json:"url"`
	Status    int       `json:"status,omitempty"`
	Error     string    `json:"error,omitempty"`
	Outcome   string    `json:"outcome"`
	Manual    bool      `json:"manual,omitempty"`
	At        time.Time `json:"at"`
}

// maxDeliveryLog and maxDeliveryLogBytes bound one job's log, in attempts and in bytes of
// its JSON; the oldest attempts go first. 256 KiB is a quarter of NATS's default maximum
// message size (the log is one KV value): an attempt is at most about 25 KiB (a 2 KiB URL
// whose every character is escaped, in the URL and again in the error), so at least ten
// of the newest stay, and a write never fails for size.
const (
	maxDeliveryLog      = 200
	maxDeliveryLogBytes = 256 << 10
)

func deliveryKey(id string) string { return "dlv." + id }

// LogDelivery appends an attempt to job id's delivery log. The log lives in the jobs
// bucket under dlv.<id>, so it expires with the job TTL and is neither re-published nor
// seen by the webhook consumer; only its latest revision is kept (replaceValue).
func (s *Store) LogDelivery(ctx context.Context, id string, a DeliveryAttempt) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	k := deliveryKey(id)
	for range 20 {
		log, rev, err := s.deliveries(ctx, id)
		if err != nil {
			return err
		}
		data, err := encodeDeliveryLog(append(log, a), s.deliveryLogLimit())
		if err != nil {
			return err
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, k, data)
		} else {
			_, err = s.replaceValue(ctx, k, data, rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return fmt.Errorf("broker: log delivery of %s: %w", id, storageErr(err))
		}
		return nil
	}
	return fmt.Errorf("%w: delivery log of %s kept changing", ErrConflict, id)
}

// replaceValue writes data as the value of key (in the jobs bucket) if its revision is
// still rev, as kv.Update does, and drops the key's earlier revisions from the bucket's
// stream in the same write (a subject rollup): for a value written whole each time whose
// earlier revisions nobody reads (a delivery log, a pending delivery's progress), kept
// only as stale copies. The bucket keeps 16 revisions of a key (for the job records): a
// job whose webhook was retried kept 16 copies of its growing delivery log on disk for
// the job TTL (up to 4 MiB for a log of 256 KiB), and each pending delivery 16 copies of
// its event (with a result of up to 64 KiB) through its hours of retries. It returns the
// new revision; a stale rev fails as kv.Update's does (errors.Is
// jetstream.ErrKeyRevisionMismatch).
func (s *Store) replaceValue(ctx context.Context, key string, data []byte, rev uint64) (uint64, error) {
	msg := nats.NewMsg("$KV." + JobsBucket + "." + key)
	msg.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	msg.Data = data
	ack, err := s.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(rev))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return 0, fmt.Errorf("%w: %w", jetstream.ErrKeyRevisionMismatch, err)
	}
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// deliveryLogLimit is the delivery log's bound in bytes: maxDeliveryLogBytes, or less
// on a server whose maximum message size is below 1 MiB.
func (s *Store) deliveryLogLimit() int {
	return int(min(maxDeliveryLogBytes, s.nc.MaxPayload()/4))
}

// encodeDeliveryLog is the JSON of the newest attempts of log that fit in limit bytes
// and maxDeliveryLog entries; the newest one is always kept.
func encodeDeliveryLog(log []DeliveryAttempt, limit int) ([]byte, error) {
	parts := make([][]byte, 0, min(len(log), maxDeliveryLog))
	size := len("[]")
	for i := len(log) - 1; i >= 0 && len(parts) < maxDeliveryLog; i-- {
		b, err := json.Marshal(log[i])
		if err != nil {
			return nil, err
		}
		if len(parts) > 0 && size+len(",")+len(b) > limit {
			break
		}
		size += len(b)
		if len(parts) > 0 {
			size += len(",")
		}
		parts = append(parts, b)
	}
	slices.Reverse(parts)
	out := make([]byte, 0, size)
	out = append(out, '[')
	for i, b := range parts {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, b...)
	}
	return append(out, ']'), nil
}

// Deliveries returns job id's delivery log, oldest first; empty when nothing was sent.
func (s *Store) Deliveries(ctx context.Context, id string) ([]DeliveryAttempt, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	log, _, err := s.deliveries(ctx, id)
	return log, err
}

func (s *Store) deliveries(ctx context.Context, id string) ([]DeliveryAttempt, uint64, error) {
	e, err := s.kvGet(ctx, deliveryKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("broker: read delivery log of %s: %w", id, err)
	}
	var log []DeliveryAttempt
	if err := json.Unmarshal(e.Value(), &log); err != nil {
		return nil, 0, fmt.Errorf("broker: decode delivery log of %s: %w", id, err)
	}
	return log, e.Revision(), nil
}

// PendingDelivery is a webhook event waiting for its next attempt. The dispatcher stores
// it before it acks the event's JetStream message, so an event in its retries holds no
// message of the consumer and survives a restart (ADR-0022). It lives in the jobs bucket
// under whq.<id>.<rev> and expires with the job TTL.
type PendingDelivery struct {
	JobID string `json:"job_id"`
	// Rev is the job record's revision (stream sequence) the event is: part of webhook-id.
	Rev uint64 `json:"rev"`
	// Attempts is the number of attempts already made.
	Attempts int       `json:"attempts"`
	NextAt   time.Time `json:"next_at"`
	// Body is the state event exactly as published.
	Body json.RawMessage `json:"body"`
	// Owner is the boot id of the foreman whose dispatcher delivers it: the one that
	// stored it, or one that adopted it when that foreman was gone (ADR-0052). Empty in
	// deliveries stored before owners were.
	Owner string `json:"owner,omitempty"`
	// Revision is the entry's revision in the bucket as read or written last; a write
	// of the entry's progress is made at it (UpdatePendingDelivery).
	Revision uint64 `json:"-"`
}

const pendingPrefix = "whq."

func pendingKey(id string, rev uint64) string {
	return pendingPrefix + id + "." + strconv.FormatUint(rev, 10)
}

// AddPendingDelivery stores a new pending delivery, owned by this process, and returns
// its revision; created is false when one for the same event exists already (its stored
// progress and owner are kept).
func (s *Store) AddPendingDelivery(ctx context.Context, p PendingDelivery) (rev uint64, created bool, err error) {
	if err := ValidateID(p.JobID); err != nil {
		return 0, false, err
	}
	p.Owner = s.cfg.BootID
	data, err := json.Marshal(p)
	if err != nil {
		return 0, false, err
	}
	rev, err = s.kv.Create(ctx, pendingKey(p.JobID, p.Rev), data)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("broker: store pending delivery of %s: %w", p.JobID, storageErr(err))
	}
	return rev, true, nil
}

// UpdatePendingDelivery stores a pending delivery's progress (attempts, next attempt),
// owned by this process, at p.Revision, and returns the new revision: ErrConflict when
// the entry was written since (another foreman adopted it) or is gone.
func (s *Store) UpdatePendingDelivery(ctx context.Context, p PendingDelivery) (uint64, error) {
	if err := ValidateID(p.JobID); err != nil {
		return 0, err
	}
	if p.Revision == 0 {
		// At revision 0 an update is a create: it could bring back a finished entry.
		return 0, fmt.Errorf("%w: pending delivery %s-%d written at no revision", ErrConflict, p.JobID, p.Rev)
	}
	p.Owner = s.cfg.BootID
	data, err := json.Marshal(p)
	if err != nil {
		return 0, err
	}
	rev, err := s.replaceValue(ctx, pendingKey(p.JobID, p.Rev), data, p.Revision)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return 0, fmt.Errorf("%w: pending delivery %s-%d written since (adopted, or finished)", ErrConflict, p.JobID, p.Rev)
		}
		return 0, fmt.Errorf("broker: update pending delivery of %s: %w", p.JobID, storageErr(err))
	}
	return rev, nil
}

// PendingDelivery reads one pending delivery; ErrNotFound when it is finished or expired.
func (s *Store) PendingDelivery(ctx context.Context, id string, rev uint64) (*PendingDelivery, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	e, err := s.kvGet(ctx, pendingKey(id, rev))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, fmt.Errorf("%w: pending delivery %s-%d", ErrNotFound, id, rev)
	}
	if err != nil {
		return nil, fmt.Errorf("broker: read pending delivery of %s: %w", id, err)
	}
	var p PendingDelivery
	if err := json.Unmarshal(e.Value(), &p); err != nil {
		return nil, fmt.Errorf("broker: decode pending delivery of %s: %w", id, err)
	}
	p.Revision = e.Revision()
	return &p, nil
}

// FinishPendingDelivery removes a pending delivery and its history (the event's body).
// Its messages are purged from the bucket's stream, leaving no delete marker: a marker
// would be listed, and read, by every dispatcher's start until the job TTL, one or two
// round trips per event delivered that day.
func (s *Store) FinishPendingDelivery(ctx context.Context, id string, rev uint64) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	subject := "$KV." + JobsBucket + "." + pendingKey(id, rev)
	if err := s.jobs.Purge(ctx, jetstream.WithPurgeSubject(subject)); err != nil {
		return fmt.Errorf("broker: finish pending delivery of %s: %w", id, storageErr(err))
	}
	return nil
}

// pendingReads is how many pending deliveries are read at once (readPending).
const pendingReads = 32

// PendingDeliveries lists every pending delivery, ordered by job and revision.
func (s *Store) PendingDeliveries(ctx context.Context) ([]PendingDelivery, error) {
	keys, err := s.bucketKeys(ctx, JobsBucket, pendingPrefix+">")
	if err != nil {
		return nil, fmt.Errorf("broker: list pending deliveries: %w", err)
	}
	found, errs := s.readPending(ctx, keys)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var out []PendingDelivery
	for _, p := range found {
		if p != nil {
			out = append(out, *p)
		}
	}
	sortPending(out)
	return out, nil
}

// readPending reads the pending deliveries under keys, pendingReads at once: on a
// cluster a read is a round trip to the stream's leader, and a key deleted before
// ADR-0052 (a marker) costs two. An entry is nil where nothing was found or the read
// failed (its error in errs).
func (s *Store) readPending(ctx context.Context, keys []string) (found []*PendingDelivery, errs []error) {
	found, errs = make([]*PendingDelivery, len(keys)), make([]error, len(keys))
	var wg sync.WaitGroup
	sem := make(chan struct{}, pendingReads)
	for i, k := range keys {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			found[i], errs[i] = s.pendingDelivery(ctx, k)
		})
	}
	wg.Wait()
	return found, errs
}

// sortPending orders pending deliveries by job and revision: a job's in the order of its
// events.
func sortPending(out []PendingDelivery) {
	slices.SortFunc(out, func(a, b PendingDelivery) int {
		if c := strings.Compare(a.JobID, b.JobID); c != 0 {
			return c
		}
		return cmp.Compare(a.Rev, b.Rev)
	})
}

// pendingDelivery reads the pending delivery under key k: nil when it finished meanwhile
// or is not one of ours (ignored rather than blocking the others).
func (s *Store) pendingDelivery(ctx context.Context, k string) (*PendingDelivery, error) {
	e, err := s.kvGet(ctx, k)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("broker: read pending delivery %s: %w", k, err)
	}
	var p PendingDelivery
	if err := json.Unmarshal(e.Value(), &p); err != nil || ValidateID(p.JobID) != nil {
		return nil, nil
	}
	p.Revision = e.Revision()
	return &p, nil
}

// ClaimPendingDeliveries returns the pending deliveries this process is to deliver,
// ordered by job and revision: its own, and those whose owner is gone, each adopted
// first by a write of this owner at the revision read, so that of several foremen
// claiming one, one has it (ADR-0052). An owner is gone when its presence is (on a
// store of its own, any owner but this process is: no other runs). skip, when set,
// names the entries not to read (those the caller holds already), by job id and event
// revision. An entry with no owner (stored by a foreman from before owners were) is
// adopted only by a claim without skip, a dispatcher's start: a foreman of that version
// still running clears the owner at each retry it stores, and a periodic claim would
// take it again each time (upgrade every foreman together). An entry that cannot be read
// or adopted now for an error is left for a later claim, and named in failed (the
// caller keeps a job's later entries back, so that they do not go out before it); one
// that finished meanwhile, or whose owner is alive, is neither returned nor named.
func (s *Store) ClaimPendingDeliveries(ctx context.Context, skip func(jobID string, rev uint64) bool) (claimed []PendingDelivery, failed []PendingRef, err error) {
	keys, err := s.bucketKeys(ctx, JobsBucket, pendingPrefix+">")
	if err != nil {
		return nil, nil, fmt.Errorf("broker: list pending deliveries: %w", err)
	}
	if skip != nil {
		keys = slices.DeleteFunc(keys, func(k string) bool {
			id, rev, ok := parsePendingKey(k)
			return ok && skip(id, rev)
		})
	}
	found, errs := s.readPending(ctx, keys)
	if err := ctx.Err(); err != nil {
		return nil, nil, err // a stop: nothing to warn of
	}
	for i, err := range errs {
		if err != nil {
			s.log.Warn("read pending webhook delivery; a later claim reads it again", "key", keys[i], "err", err)
			if id, rev, ok := parsePendingKey(keys[i]); ok {
				failed = append(failed, PendingRef{JobID: id, Rev: rev})
			}
		}
	}
	gone := map[string]bool{} // owners looked up, by boot id
	for _, p := range found {
		if p == nil {
			continue
		}
		if p.Owner == "" && skip != nil {
			continue // see above
		}
		if p.Owner != s.cfg.BootID {
			g, seen := gone[p.Owner]
			if !seen {
				g = p.Owner == "" || s.cfg.Exclusive || !s.present(ctx, p.Owner)
				gone[p.Owner] = g
			}
			if !g {
				continue // its owner delivers it
			}
			rev, err := s.UpdatePendingDelivery(ctx, *p)
			if err != nil {
				if !errors.Is(err, ErrConflict) {
					s.log.Warn("adopt pending webhook delivery; a later claim tries again", "job_id", p.JobID, "rev", p.Rev, "err", err)
					failed = append(failed, PendingRef{JobID: p.JobID, Rev: p.Rev})
				}
				continue // another foreman adopted it first, or it finished
			}
			p.Owner, p.Revision = s.cfg.BootID, rev
		}
		claimed = append(claimed, *p)
	}
	sortPending(claimed)
	return claimed, failed, nil
}

// PendingRef names a pending delivery: its job and the event's record revision.
type PendingRef struct {
	JobID string
	Rev   uint64
}

// parsePendingKey reads whq.<id>.<rev>.
func parsePendingKey(k string) (id string, rev uint64, ok bool) {
	rest, ok := strings.CutPrefix(k, pendingPrefix)
	if !ok {
		return "", 0, false
	}
	id, r, ok := strings.Cut(rest, ".")
	if !ok {
		return "", 0, false
	}
	rev, err := strconv.ParseUint(r, 10, 64)
	return id, rev, err == nil
}
