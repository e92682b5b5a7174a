package gateway

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"

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
