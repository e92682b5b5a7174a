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

// Standard Webhooks 1.0 headers, plus foreman's own body-only signature for receivers
// that only know the GitHub-style "sha256=<hex>" scheme.
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
	ErrMissingHeaders = errors.New("webhook: missing webhook-id, webhook-timestamp or webhook-signature")
	ErrBadTimestamp   = errors.New("webhook: timestamp outside the tolerance")
	ErrNoMatch        = errors.New("webhook: no matching signature")
)

// Key turns a configured secret into the HMAC key: "whsec_<base64>" is decoded (as the
// Standard Webhooks libraries do), any other string is used as raw bytes.
func Key(secret string) ([]byte, error) {
	if rest, ok := strings.CutPrefix(secret, secretPrefix); ok {
		k, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return nil, fmt.Errorf("webhook secret %s…: not valid base64 after %q: %w", secretPrefix, secretPrefix, err)
		}
		return k, nil
	}
	return []byte(secret), nil
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

// ForemanSignature is the X-Foreman-Signature value: "sha256=<hex HMAC-SHA256 of body>".
func ForemanSignature(key, body []byte) string {
	h := hmac.New(sha256.New, key)
	h.Write(body)
	return "sha256=" + hex.EncodeToString(h.Sum(nil))
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

// Verify checks a received webhook the Standard Webhooks way: the timestamp must be
// within tolerance of now (default 5 minutes when tolerance is 0), and one of the
// space-separated "v1,<sig>" values must match. Receivers should also dedupe on webhook-id.
func Verify(secret string, header http.Header, body []byte, tolerance time.Duration) error {
	id, tsRaw, sigs := header.Get(HeaderID), header.Get(HeaderTimestamp), header.Get(HeaderSignature)
	if id == "" || tsRaw == "" || sigs == "" {
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
	key, err := Key(secret)
	if err != nil {
		return err
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
	return ErrNoMatch
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
