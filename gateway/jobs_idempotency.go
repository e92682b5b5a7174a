package gateway

import (
	"crypto/sha256"
	"encoding/hex"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// bodyDigests are the digests of a submit that its idempotency claim holds (and a retry is
// compared by). The key protects the job itself: its kind and the members sent to the
// target, not the foreman fields (a client's own receiver URL changes between retries).
type bodyDigests struct {
	// members is of the kind and the target's members written with no white space between
	// them (writeMembers): the same whichever foreman fields came along and however the
	// client spaced its object (Python's json.dumps writes ", " and ": ").
	members string
	// body is what foremen from before members compare: of the kind and the body as sent
	// when it had no foreman field, else of the members as above. With it in BodySHA256
	// such a foreman, sharing the NATS, still replays this foreman's claims as it did.
	body string
}

// digestsOf returns the digests of sub. Each is written in parts: a body of megabytes is
// not copied for it.
func digestsOf(sub *submission) bodyDigests {
	h := sha256.New()
	h.Write([]byte(string(sub.kind) + "\n"))
	writeMembers(h, sub.kept)
	d := bodyDigests{members: hex.EncodeToString(h.Sum(nil))}
	d.body = d.members
	if !sub.reencoded {
		h.Reset()
		h.Write([]byte(string(sub.kind) + "\n"))
		h.Write(sub.body)
		d.body = hex.EncodeToString(h.Sum(nil))
	}
	return d
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
		return c.BodySHA256 == d.body || c.BodySHA256 == d.members
	}
	return true
}
