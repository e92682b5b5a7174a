package webhook

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

// Standard Webhooks 1.0 headers, plus foreman's own signature for receivers that only
// know the GitHub-style "sha256=<hex>" scheme. Both signatures are the HMAC-SHA256 of the
// same string,
//
//	<webhook-id> "." <webhook-timestamp> "." <body>
//
// (webhook-timestamp in decimal Unix seconds, body byte for byte), so a captured delivery
// cannot be replayed under a fresh timestamp or another id.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
	HeaderForeman   = "X-Foreman-Signature"
)

// secretPrefix marks a Standard Webhooks secret: the rest is the base64 of the key.
const secretPrefix = "whsec_"

// Verification errors.
var (
	ErrMissingHeaders = errors.New("webhook: missing webhook-id, webhook-timestamp or a signature (webhook-signature or X-Foreman-Signature)")
	ErrBadTimestamp   = errors.New("webhook: timestamp outside the tolerance")
	ErrNoMatch        = errors.New("webhook: no matching signature")
	ErrNoSecret       = errors.New("webhook: the secret is empty")
)

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

// Sign returns the webhook-signature value ("v1,<base64 HMAC-SHA256>") of a message:
// the signed content is "<id>.<unix seconds>.<body>".
func Sign(secret, id string, ts time.Time, body []byte) (string, error) {
	key, err := Key(secret)
	if err != nil {
		return "", err
	}
	return "v1," + base64.StdEncoding.EncodeToString(mac(key, id, ts.Unix(), body)), nil
}

// ForemanSignature is the X-Foreman-Signature value:
// "sha256=<hex HMAC-SHA256(key, id + "." + unix seconds + "." + body)>", the same MAC as
// webhook-signature's, in hex.
func ForemanSignature(key []byte, id string, ts time.Time, body []byte) string {
	return foremanPrefix + hex.EncodeToString(mac(key, id, ts.Unix(), body))
}

const foremanPrefix = "sha256="

func mac(key []byte, id string, ts int64, body []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(id))
	h.Write([]byte{'.'})
	h.Write([]byte(strconv.FormatInt(ts, 10)))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Verify checks a received webhook: the webhook-timestamp must be within tolerance of
// now (5 minutes when tolerance is 0, as in the Standard Webhooks libraries), and one of
// the space-separated "v1,<base64>" values of webhook-signature, or X-Foreman-Signature
// ("sha256=<hex>"), must be the HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>".
// An empty secret is refused with ErrNoSecret rather than checked against an empty key.
// Receivers should also dedupe on webhook-id.
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
	ts, err := strconv.ParseInt(tsRaw, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %q is not unix seconds", ErrBadTimestamp, tsRaw)
	}
	if tolerance <= 0 {
		tolerance = 5 * time.Minute
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
		got, err := base64.StdEncoding.DecodeString(b64)
		if err == nil && hmac.Equal(got, want) {
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

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
