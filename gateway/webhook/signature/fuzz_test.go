package signature

import (
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// FuzzVerify checks deliveries with fuzzed secrets, ids, bodies and headers. Verify never
// panics; a delivery signed with a secret (either signature) verifies under it, with the
// timestamp as the dispatcher writes it; and the same delivery with its body, id or
// timestamp changed, or under another secret, does not.
// Run with: go test -run '^$' -fuzz '^FuzzVerify$' -fuzztime 30s ./gateway/webhook/signature
func FuzzVerify(f *testing.F) {
	f.Add("whsec_c2VjcmV0LWtleS1ieXRlcw==", "msg_1", []byte(`{"id":"x","state":"done"}`), "v1,abc v1,", "sha256=00", "1700000000")
	f.Add("raw secret", "01JGJ4Q2R0000000000000000A", []byte(""), "v2,xyz", "", "+1700000000")
	f.Add("whsec_", "a.b", []byte("c.d"), "", "sha256=", "-1")
	f.Add("whsec_!!", "", []byte("x"), "v1,", "sha256=zz", "9223372036854775807")
	f.Fuzz(func(t *testing.T, secret, id string, body []byte, sigs, foreman, ts string) {
		h := http.Header{}
		h.Set(HeaderID, id)
		h.Set(HeaderTimestamp, ts)
		h.Set(HeaderSignature, sigs)
		h.Set(HeaderForeman, foreman)
		_ = Verify(secret, h, body, 0) // anything at all: no panic
		key, err := Key(secret)
		if err != nil {
			if Verify(secret, h, body, 0) == nil {
				t.Fatalf("secret %q has no key (%v), yet a delivery verified", secret, err)
			}
			return
		}
		if id == "" {
			return // no delivery has none
		}
		now := time.Now()
		for _, signed := range []http.Header{
			{HeaderID: {id}, HeaderTimestamp: {strconv.FormatInt(now.Unix(), 10)}, HeaderSignature: {Standard(key, id, now, body)}},
			{HeaderID: {id}, HeaderTimestamp: {strconv.FormatInt(now.Unix(), 10)}, HeaderForeman: {Foreman(key, id, now, body)}},
		} {
			signed = canonical(signed)
			if err := Verify(secret, signed, body, time.Hour); err != nil {
				t.Fatalf("secret %q id %q body %q: a signed delivery does not verify: %v", secret, id, body, err)
			}
			if err := Verify(secret, signed, append(body[:len(body):len(body)], 'x'), time.Hour); !errors.Is(err, ErrNoMatch) {
				t.Fatalf("secret %q id %q: a changed body verifies (%v)", secret, id, err)
			}
			other := signed.Clone()
			other.Set(HeaderID, id+"x")
			if err := Verify(secret, other, body, time.Hour); !errors.Is(err, ErrNoMatch) {
				t.Fatalf("secret %q id %q: a changed id verifies (%v)", secret, id, err)
			}
			other = signed.Clone()
			other.Set(HeaderTimestamp, strconv.FormatInt(now.Unix()+1, 10))
			if err := Verify(secret, other, body, time.Hour); !errors.Is(err, ErrNoMatch) {
				t.Fatalf("secret %q id %q: a changed timestamp verifies (%v)", secret, id, err)
			}
			if err := Verify(secret+"x", signed, body, time.Hour); err == nil {
				if k2, _ := Key(secret + "x"); string(k2) != string(key) {
					t.Fatalf("secret %q id %q: another secret verifies", secret, id)
				}
			}
		}
	})
}

// canonical sets a header's values under their canonical names, as a received request has them.
func canonical(h http.Header) http.Header {
	out := http.Header{}
	for k, v := range h {
		for _, s := range v {
			out.Add(k, s)
		}
	}
	return out
}
