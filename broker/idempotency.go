package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// IdempotencyClaim is what an Idempotency-Key maps to: the job it created and a digest of
// the request that created it, so a key reused with another request can be refused.
type IdempotencyClaim struct {
	JobID string `json:"job_id"`
	// MembersSHA256 is the digest a retry is compared by; BodySHA256 is the one foremen
	// from before MembersSHA256 compare by, and the only one their claims have. The
	// gateway says what each is of (digestsOf).
	MembersSHA256 string `json:"members_sha256,omitempty"`
	BodySHA256    string `json:"body_sha256,omitempty"`
	// Until is the deadline of the submit that made the claim: until then its job record
	// may still be on its way (a large body under SyncAlways takes a while), after it a
	// claim without a record is orphaned (its request died) and may be taken over.
	// It is on the claimant's clock: foremen from before Within compare it with theirs.
	Until time.Time `json:"until,omitzero"`
	// Within is what was left of that submit's time when the claim was made: the claim
	// is live until Claimed plus Within, all on the NATS server's clock, so that no
	// foreman's clock, however far off, takes over a claim whose request is merely slow
	// (ADR-0060).
	Within time.Duration `json:"within_ns,omitzero"`
	// Boot is the boot id of the foreman whose request made the claim (Config.BootID);
	// empty in claims of foremen from before it. ClaimantGone reads it.
	Boot string `json:"boot,omitempty"`
	// Claimed is when the claim was stored (the server's time); filled in on read.
	Claimed time.Time `json:"-"`
}

// ClaimantGone reports whether the request that made claim c died with its process: on
// a store of this process's own (the embedded server) a claim another boot made is a
// dead process's, whose record, if not stored by now, never will be. Elsewhere, and for
// a claim that names no boot, only its deadline says so.
func (s *Store) ClaimantGone(c IdempotencyClaim) bool {
	return s.cfg.Exclusive && c.Boot != "" && c.Boot != s.cfg.BootID
}

// idemKey is the KV key of an idempotency key. It lives in the jobs bucket (so it expires
// a job TTL after its last write, as a record does) under a prefix that is neither
// re-published nor listed as a job; the hash keeps any client string a valid KV key.
func idemKey(key string) string { return idemPrefix + IdempotencyRef(key) }

const idemPrefix = "idem."

// IdempotencyRef is what a job's record keeps of the idempotency key it was submitted
// under (Job.Idempotency): the digest naming its claim, not the key.
func IdempotencyRef(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// ForeignEntriesMayLive reports whether the jobs bucket may still hold an entry this
// foreman never writes but one of another version did (an idempotency claim under a form
// of key it no longer uses). On a shared NATS it may: another foreman, not yet upgraded,
// may write one now. On a store of its own (Config.Exclusive) only during the first job
// TTL after this process opened it: such an entry was written before, by an earlier run,
// and the bucket drops every entry a job TTL after its last write (the TTL this process
// set on it). The span is on this host's monotonic clock.
func (s *Store) ForeignEntriesMayLive() bool {
	return !s.cfg.Exclusive || s.clock().Sub(s.started) < s.JobTTL()
}

// ClaimIdempotencyKey binds key to claim.JobID unless the key is already bound. It returns
// the binding in force and whether this call created it. kv.Create makes the claim atomic:
// of two racing requests with the same key exactly one wins, the other gets the winner's job.
func (s *Store) ClaimIdempotencyKey(ctx context.Context, key string, claim IdempotencyClaim) (IdempotencyClaim, bool, error) {
	if err := ValidateID(claim.JobID); err != nil {
		return IdempotencyClaim{}, false, err
	}
	data, err := json.Marshal(claim)
	if err != nil {
		return IdempotencyClaim{}, false, err
	}
	k := idemKey(key)
	if err := s.fault.standing(s.cfg.WriteFault, s.clock()); err != nil {
		return IdempotencyClaim{}, false, fmt.Errorf("broker: claim idempotency key: %w", err)
	}
	for range 5 {
		// Retried through a leader election as every store write is (ADR-0030): a create
		// answered by nobody was a 500, one left waiting the submit's deadline a 504.
		err := s.retryWrite(ctx, func(ctx context.Context) error {
			_, err := s.kv.Create(ctx, k, data)
			return err
		})
		if err == nil {
			return claim, true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return IdempotencyClaim{}, false, fmt.Errorf("broker: claim idempotency key: %w", storageErr(err))
		}
		var e jetstream.KeyValueEntry
		err = s.retry(ctx, func(ctx context.Context) error {
			var err error
			e, err = s.kvGet(ctx, k)
			return err
		})
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue // released between our Create and Get: try again
		}
		if err != nil {
			return IdempotencyClaim{}, false, fmt.Errorf("broker: read idempotency key: %w", err)
		}
		got, err := decodeClaim(e)
		if err == nil && got.JobID == claim.JobID {
			// A try of this very create stored unseen (its answer lost to the election)
			// and the retry found it: the claim is this call's.
			return claim, true, nil
		}
		return got, false, err
	}
	return IdempotencyClaim{}, false, fmt.Errorf("%w: idempotency key keeps changing", ErrConflict)
}

// IdempotencyKeyClaim is the binding of key in force; ErrNotFound when key is free (never
// claimed, released or aged out). A request waiting for another one's job under the key
// reads it to see that the other request gave the key up.
func (s *Store) IdempotencyKeyClaim(ctx context.Context, key string) (IdempotencyClaim, error) {
	var e jetstream.KeyValueEntry
	err := s.retry(ctx, func(ctx context.Context) error {
		var err error
		e, err = s.kvGet(ctx, idemKey(key))
		return err
	})
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return IdempotencyClaim{}, fmt.Errorf("%w: idempotency key", ErrNotFound)
	}
	if err != nil {
		return IdempotencyClaim{}, fmt.Errorf("broker: read idempotency key: %w", err)
	}
	return decodeClaim(e)
}

// decodeClaim reads a stored claim.
func decodeClaim(e jetstream.KeyValueEntry) (IdempotencyClaim, error) {
	var c IdempotencyClaim
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		return IdempotencyClaim{}, fmt.Errorf("broker: decode idempotency key: %w", err)
	}
	c.Claimed = e.Created()
	return c, nil
}

// ReleaseIdempotencyKey removes a binding whose job could not be submitted, so the client
// may retry with the same key. It only removes the binding to jobID.
func (s *Store) ReleaseIdempotencyKey(ctx context.Context, key, jobID string) error {
	k := idemKey(key)
	for range 5 {
		e, err := s.kvGet(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("broker: read idempotency key: %w", err)
		}
		var got IdempotencyClaim
		if json.Unmarshal(e.Value(), &got) != nil || got.JobID != jobID {
			return nil
		}
		if err := s.fault.standing(s.cfg.WriteFault, s.clock()); err != nil {
			return fmt.Errorf("broker: release idempotency key: %w", err)
		}
		err = s.kv.Delete(ctx, k, jetstream.LastRevision(e.Revision()))
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("broker: release idempotency key: %w", storageErr(err))
		}
		// Written since the read: by a release and another claim, or stamped anew for
		// the same job (keepClaim), which is still to be released. Read it again.
	}
	return fmt.Errorf("%w: idempotency key keeps changing", ErrConflict)
}

// keepClaim stamps anew the idempotency claim of job j, whose record was just written.
// The claim is written once, at submit, in the jobs bucket, whose TTL ages each revision
// from its own write; the record is written again at the start, the result, a cancel and
// by every Refresh of a long run. Left as it was, the claim would age out first, and a
// retry with its key would make a second job (run twice) while the first one still
// answers. Stamped after every write of the record, it lives at least as long. The
// stamp is the claim unchanged, written only at the revision read and only while it
// names j: a claim released meanwhile (deleted), or taken by another job, stays so. It
// costs a job with a key a read and a write per record write, the others nothing. A
// failure is logged and leaves the claim to age out first, as it did before.
func (s *Store) keepClaim(ctx context.Context, j *Job) {
	if j.Idempotency == "" {
		return
	}
	k := idemPrefix + j.Idempotency
	// One try each, bounded: the record's write is done and its caller waits (an async
	// job's first frame waits for its start write); a missed stamp only leaves the claim
	// to age as it did before.
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	e, err := s.kvGet(ctx, k)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return // released, or aged out with a write of the record that failed
	}
	if err == nil {
		var c IdempotencyClaim
		if json.Unmarshal(e.Value(), &c) != nil || c.JobID != j.ID {
			return
		}
		_, err = s.kv.Update(ctx, k, e.Value(), e.Revision())
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			// Written since the read, so after the record: stamped by another write of
			// the job's (or by this one, its answer lost), or released. Either way done.
			return
		}
	}
	if err != nil {
		s.log.Warn("keep idempotency key with its job", "job_id", j.ID, "model", j.Model, "err", err)
	}
}
