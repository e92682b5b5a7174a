// Package signature signs and verifies foreman's webhook deliveries. It is the one
// implementation both sides share: the gateway's webhook dispatcher signs with it, and
// the public client's VerifyWebhook checks with it. It uses the standard library only, so
// importing it adds nothing to a client's build (not the dispatcher, not nats-server).
//
// Two signatures cover the same MAC: HMAC-SHA256 of
//
//	<webhook-id> "." <webhook-timestamp> "." <body>
//
// (webhook-timestamp in decimal Unix seconds, the body byte for byte). webhook-signature
// holds it as space-separated "v1,<base64>" values (Standard Webhooks 1.0),
// X-Foreman-Signature as "sha256=<hex>" for receivers that only know the GitHub-style
// scheme. The id and the timestamp are signed, so a captured delivery cannot be replayed
// under a fresh timestamp or another id.
package signature

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Headers of a delivery: Standard Webhooks 1.0, plus foreman's own signature.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
	HeaderForeman   = "X-Foreman-Signature"
)

// DefaultTolerance is how far a delivery's timestamp may be from now when Verify is given
// no tolerance, as in the Standard Webhooks libraries.
const DefaultTolerance = 5 * time.Minute

// secretPrefix marks a Standard Webhooks secret: the rest is the base64 of the key.
const secretPrefix = "whsec_"

// foremanPrefix starts an X-Foreman-Signature value.
const foremanPrefix = "sha256="

// Verification errors.
var (
	ErrMissingHeaders = errors.New("webhook: missing webhook-id, webhook-timestamp or a signature (webhook-signature or X-Foreman-Signature)")
	ErrBadTimestamp   = errors.New("webhook: timestamp outside the tolerance")
	ErrNoMatch        = errors.New("webhook: no matching signature")
	ErrNoSecret       = errors.New("webhook: the secret is empty")
	// ErrMalformedTimestamp: webhook-timestamp is not Unix seconds written as foreman
	// writes them (decimal digits, no sign, no leading zero; "-" before a negative
	// number). It matches ErrBadTimestamp too, which covered it before it had its own.
	ErrMalformedTimestamp error = malformedTimestamp{}
)

// malformedTimestamp is ErrMalformedTimestamp's type, whose Is makes it match
// ErrBadTimestamp.
type malformedTimestamp struct{}

func (malformedTimestamp) Error() string {
	return "webhook: timestamp is not decimal unix seconds as foreman writes them"
}

func (malformedTimestamp) Is(target error) bool { return target == ErrBadTimestamp }

// Key turns a configured secret into the HMAC key: "whsec_<base64>" is decoded (as the
// Standard Webhooks libraries do), any other string is used as raw bytes. An empty key
// ("" or "whsec_" alone) is ErrNoSecret: anyone could sign with it.
func Key(secret string) ([]byte, error) {
	k := []byte(secret)
	if rest, ok := strings.CutPrefix(secret, secretPrefix); ok {
		var err error
		if k, err = base64.StdEncoding.DecodeString(rest); err != nil {
			return nil, fmt.Errorf("webhook secret %s…: not valid base64 after %q: %w", secretPrefix, secretPrefix, err)
		}
	}
	if len(k) == 0 {
		return nil, ErrNoSecret
	}
	return k, nil
}

// Sign returns the webhook-signature value of a message signed with secret (see Key).
func Sign(secret, id string, ts time.Time, body []byte) (string, error) {
	key, err := Key(secret)
	if err != nil {
		return "", err
	}
	return Standard(key, id, ts, body), nil
}

// Standard returns the webhook-signature value: "v1,<base64 MAC>".
func Standard(key []byte, id string, ts time.Time, body []byte) string {
	return "v1," + base64.StdEncoding.EncodeToString(mac(key, id, ts.Unix(), body))
}

// Foreman returns the X-Foreman-Signature value: "sha256=<hex MAC>", the same MAC as
// webhook-signature's.
func Foreman(key []byte, id string, ts time.Time, body []byte) string {
	return foremanPrefix + hex.EncodeToString(mac(key, id, ts.Unix(), body))
}

func mac(key []byte, id string, ts int64, body []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(id))
	h.Write([]byte{'.'})
	h.Write([]byte(strconv.FormatInt(ts, 10)))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Verify checks a received delivery: webhook-timestamp must be Unix seconds written as
// the dispatcher writes them (else ErrMalformedTimestamp, which matches ErrBadTimestamp
// too) within tolerance of now (DefaultTolerance when tolerance is 0 or less; else
// ErrBadTimestamp), and one of the "v1,<base64>" values of
// webhook-signature, or X-Foreman-Signature, must be the MAC of
// "<webhook-id>.<webhook-timestamp>.<body>" under secret's key. An empty secret is
// refused with ErrNoSecret rather than checked against an empty key. Receivers should
// also dedupe on webhook-id: deliveries are at-least-once.
func Verify(secret string, header http.Header, body []byte, tolerance time.Duration) error {
	key, err := Key(secret)
	if err != nil {
		return err
	}
	id, tsRaw := header.Get(HeaderID), header.Get(HeaderTimestamp)
	sigs, foreman := header.Get(HeaderSignature), header.Get(HeaderForeman)
	if id == "" || tsRaw == "" || (sigs == "" && foreman == "") {
		return ErrMissingHeaders
	}
	// The MAC is of the number as the dispatcher writes it (mac formats it): a header
	// that writes it otherwise ("+1700000000", "01700000000") is not what was signed.
	ts, err := strconv.ParseInt(tsRaw, 10, 64)
	if err != nil || strconv.FormatInt(ts, 10) != tsRaw {
		return fmt.Errorf("%w: %q", ErrMalformedTimestamp, tsRaw)
	}
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	if d := time.Since(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return ErrBadTimestamp
	}
	want := mac(key, id, ts, body)
	for _, s := range strings.Fields(sigs) {
		v, b64, ok := strings.Cut(s, ",")
		if !ok || v != "v1" {
			continue
		}
		if got, err := base64.StdEncoding.DecodeString(b64); err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	if hexSig, ok := strings.CutPrefix(foreman, foremanPrefix); ok {
		if got, err := hex.DecodeString(hexSig); err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return ErrNoMatch
}
