package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// bodyDigests are the digests of a submit that its idempotency claim holds (and a retry is
// compared by). The key protects the job itself: its kind and the members sent to the
// target, not the foreman fields (a client's own receiver URL changes between retries).
type bodyDigests struct {
	// members is of the kind and the target's members written with no white space
	// anywhere (writeCompact): the same whichever foreman fields came along and however
	// the client spaced its JSON (Python's json.dumps writes ", " and ": ", nested values
	// too).
	members string
	// body is what foremen from before members compare: of the kind and the body as sent
	// when it had no foreman field, else of its members re-encoded (writeMembers: no
	// white space between members, values as sent). With it in BodySHA256 such a foreman,
	// sharing the NATS, still replays this foreman's claims as it did.
	body string
	// reencoded is of the kind and the members re-encoded, whether or not they were:
	// what such a foreman stored for a request with foreman fields.
	reencoded string
}

// digestsOf returns the digests of sub. Each is written in parts: a body of megabytes is
// not copied for it (one value at a time is, to compact it).
func digestsOf(sub *submission) bodyDigests {
	sum := func(write func(io.Writer)) string {
		h := sha256.New()
		h.Write([]byte(string(sub.kind) + "\n"))
		write(h)
		return hex.EncodeToString(h.Sum(nil))
	}
	d := bodyDigests{
		members:   sum(func(w io.Writer) { writeCompact(w, sub.kept) }),
		reencoded: sum(func(w io.Writer) { writeMembers(w, sub.kept) }),
	}
	d.body = d.reencoded
	if !sub.reencoded {
		d.body = sum(func(w io.Writer) { _, _ = w.Write(sub.body) })
	}
	return d
}

// writeCompact is writeMembers with each value's insignificant white space left out
// (json.Compact; a value that does not compact goes as it is). One value at a time is
// copied for it.
func writeCompact(w io.Writer, ms []member) {
	var buf bytes.Buffer
	writeMembersWith(w, ms, func(v []byte) {
		buf.Reset()
		if json.Compact(&buf, v) == nil {
			v = buf.Bytes()
		}
		_, _ = w.Write(v)
	})
}

// match reports whether c was claimed for a request like the one of d. A claim from a
// foreman before members_sha256 (stored up to a job TTL before an upgrade, or by one not
// yet upgraded on a shared NATS) has only the old digest, of the body as sent or of the
// members: either of a retry's is the same job. One case still differs there, as it did
// before: a first request without foreman fields and with white space, retried with a
// foreman field, is refused (422) while that claim lasts.
func (d bodyDigests) match(c broker.IdempotencyClaim) bool {
	switch {
	case c.MembersSHA256 != "":
		return c.MembersSHA256 == d.members
	case c.BodySHA256 != "":
		return c.BodySHA256 == d.body || c.BodySHA256 == d.reencoded
	}
	return true
}

// maxKeyTurns bounds the claims one request makes of its key. Each claim after the first
// follows the key from a request that gave it up (its submit failed, or it died) to the
// next: of n requests sent together with one key, each failing as the first did, the
// last takes it on its n-th claim. Past the bound the request is told to retry (409)
// rather than claim on until its deadline, as it could with a stream of such requests
// or a replica's stale reads of the key.
const maxKeyTurns = 16

// claimKey binds the idempotency key to this request's job (claim.JobID), or finds the
// job another request made under it: replay names that job, "" when the key is this
// request's now. A key another request holds is waited for (awaitClaimed). Once that
// request gives it up, the key is claimed again at once: the request gets what a fresh
// one would (its own job, or the refusal that failed the other), not a 409 after waiting
// out its deadline for a job that will never come. legacy is the key as a foreman from
// before keys were per program claimed it ("" when no such claim can be stored,
// legacyIdempotencyKey): a claim under it is the key's when its job is program's (the
// request's), and is never written anew.
//
// With claim nil it only finds: the job the key names for a request the submit's checks
// refused (ADR-0140), "" when it names none, and the refusal stands. The same digests,
// legacy keys and waits for a claim in flight apply, but no claim is written and none
// orphaned is taken over: that request makes no job. Another body's claim is no replay
// then (the refusal stands, as it did when the checks came first).
//
// queued is the body the key's job was queued with, from its record (queuedBodyOf): a
// job found without its queue message is queued again with it.
func (s *Server) claimKey(ctx context.Context, key, legacy, program string, claim *broker.IdempotencyClaim, sums bodyDigests, queued func(*broker.Job) []byte) (replay string, err error) {
	var end time.Time
	if claim != nil {
		c := *claim
		claim = &c
		end = time.Now().Add(claim.Within) // the submit's deadline, on the monotonic clock
	}
	for range maxKeyTurns {
		if claim != nil {
			// A claim made again, after waiting for another request's, has that much less
			// time left: its claim is live for no longer than this request.
			claim.Within = time.Until(end)
		}
		under, got, free, err := s.claimOrFind(ctx, key, legacy, claim)
		if err != nil {
			return "", err
		}
		if free {
			return "", nil
		}
		if !sums.match(got) {
			if under == legacy && program != "" {
				// Another program's request may have claimed the key in the one
				// namespace of then: a body of its own is no reuse of this program's key.
				legacy = ""
				continue
			}
			if claim == nil {
				return "", nil // the key names another body's job: not this request's
			}
			return "", refuse(ErrKeyReused, "Idempotency-Key was already used with a different request body")
		}
		held, err := s.awaitClaimed(ctx, under, got)
		if err != nil {
			return "", err
		}
		switch held {
		case claimRecorded:
			// A crash between the record and its queue message leaves the job queued
			// with nothing to run it: publish it again (a duplicate is dropped), with the
			// body it was first queued with, not the retry's as sent.
			j, err := s.store.Resubmit(ctx, got.JobID, queued)
			if errors.Is(err, broker.ErrNotFound) {
				continue // its submit failed and discarded it just now: claim again
			}
			if err != nil {
				return "", err
			}
			if under == legacy && j.Program != program {
				// An old foreman's claim of another program's request (a named token's,
				// or its header's, or one without a program, with the same body): its
				// keys shared one namespace then. Not this request's job.
				legacy = ""
				continue
			}
			return got.JobID, nil
		case claimOrphaned:
			if claim == nil {
				if under == legacy {
					// An old foreman's claim whose job never came to be: the program's
					// key may still name one, where a claim would look once it took this
					// one over.
					legacy = ""
					continue
				}
				// Its job never came to be: the key names no job, and a request the
				// checks refused makes none.
				return "", nil
			}
			// The key names a job that never came to be (its first request died between
			// the claim and the submit, and its deadline has passed): take it over.
			if err := s.store.ReleaseIdempotencyKey(ctx, under, got.JobID); err != nil {
				return "", err
			}
		}
	}
	return "", errClaimBusy
}

// claimOrFind is a claim of key for claim, unless legacy (when not "") holds one: then
// that one, found, is the key's. It returns the key of the claim it returns, and free
// when the key is the request's: claimed now, or, with claim nil (a find: nothing is
// written), claimed by no request. A claim under legacy is only read: this foreman's own
// claims go under key.
func (s *Server) claimOrFind(ctx context.Context, key, legacy string, claim *broker.IdempotencyClaim) (under string, got broker.IdempotencyClaim, free bool, err error) {
	if legacy != "" {
		got, err := s.store.IdempotencyKeyClaim(ctx, legacy)
		if err == nil {
			return legacy, got, false, nil
		}
		if !errors.Is(err, broker.ErrNotFound) {
			return "", broker.IdempotencyClaim{}, false, err
		}
	}
	if claim == nil {
		got, err := s.store.IdempotencyKeyClaim(ctx, key)
		if errors.Is(err, broker.ErrNotFound) {
			return key, broker.IdempotencyClaim{}, true, nil
		}
		return key, got, false, err
	}
	got, free, err = s.store.ClaimIdempotencyKey(ctx, key, *claim)
	return key, got, free, err
}

// legacyIdempotencyKey is the key a request's Idempotency-Key (key) was claimed under by
// foremen from before keys were per program (d87989e): the key itself, without the
// program and newline scopedIdempotencyKey puts before it. Those foremen put every
// program's keys in one namespace, so a claim found there is the request's only when its
// job's record names the request's program (claimKey; ADR-0080: those foremen had
// programs, and a program's retry across the upgrade ran its job twice). It is "" when
// such a claim cannot be there, and no read is spent on it: on a store of this foreman's
// own once a job TTL has passed since it opened it, as those claims were written before
// and are never stamped anew (their records name no claim), so they age out a job TTL
// after their submit. On a shared NATS a foreman not yet upgraded may claim one now:
// there it is always read (ADR-0062).
func (s *Server) legacyIdempotencyKey(key string) string {
	if key == "" || !s.store.ForeignEntriesMayLive() {
		return ""
	}
	return key
}

// claimHeld is what became of a claim another request holds (awaitClaimed).
type claimHeld int

const (
	// claimRecorded: its job's record exists.
	claimRecorded claimHeld = iota
	// claimGivenUp: the key no longer names its job: released by its failed submit, and
	// perhaps claimed since by yet another request.
	claimGivenUp
	// claimOrphaned: its submit's deadline (plus claimGrace) passed with no record.
	claimOrphaned
)

// claimGrace is how long after its submit's deadline a claim still counts as live: a
// record write sent just before the deadline may land a moment after it.
const claimGrace = 2 * time.Second

// awaitClaimed waits for the job record of claim c, which another request made under
// key. It returns once the record exists; once the key no longer names c's job (that
// request's submit failed and released it), so that the caller claims again at once;
// or once c is orphaned: its submit's deadline (plus claimGrace) passed with no record,
// so that request died or gave up, and c may be taken over. A claim is never taken over
// only because its request is slow. When ctx ends first, the answer is a 409: the other
// request may still succeed.
func (s *Server) awaitClaimed(ctx context.Context, key string, c broker.IdempotencyClaim) (claimHeld, error) {
	// The claim's end on the NATS server's clock (ADR-0060): its store's time plus what
	// its submit had left. A claim of a foreman from before has only its deadline on
	// that foreman's clock, taken against this one's; one written without either is
	// allowed the longest submit there is.
	until, clock := c.Claimed.Add(c.Within), s.store.ServerNow
	switch {
	case c.Within > 0 && !c.Claimed.IsZero():
	case !c.Until.IsZero():
		until, clock = c.Until, s.store.Now
	default:
		until = c.Claimed.Add(max(submitTimeout, natsSubmitTimeout))
	}
	until = until.Add(claimGrace)
	for {
		_, _, err := s.store.Get(ctx, c.JobID)
		switch {
		case err == nil:
			return claimRecorded, nil
		case ctx.Err() != nil:
			return 0, errClaimBusy
		case !errors.Is(err, broker.ErrNotFound):
			return 0, err
		}
		// No record yet. One may come only while the key names its job: a submit that
		// fails takes back its record, then releases the key.
		now, err := s.store.IdempotencyKeyClaim(ctx, key)
		switch {
		case errors.Is(err, broker.ErrNotFound), err == nil && now.JobID != c.JobID:
			return claimGivenUp, nil
		case ctx.Err() != nil:
			return 0, errClaimBusy
		case err != nil:
			return 0, err
		case clock().After(until), s.store.ClaimantGone(now):
			// Its deadline passed, or its process died (a kill between the claim and
			// the record): its record will never come.
			return claimOrphaned, nil
		}
		select {
		case <-ctx.Done():
			return 0, errClaimBusy
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// errClaimBusy answers a request whose idempotency key another live request holds.
var errClaimBusy = refuse(ErrConflict, "Idempotency-Key: another request with this key is still being submitted; retry")
