package webhook

import (
	"net/http"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook/signature"
)

// Standard Webhooks 1.0 headers, plus foreman's own signature; see package signature for
// what is signed and how.
const (
	HeaderID        = signature.HeaderID
	HeaderTimestamp = signature.HeaderTimestamp
	HeaderSignature = signature.HeaderSignature
	HeaderForeman   = signature.HeaderForeman
)

// Verification errors.
var (
	ErrMissingHeaders = signature.ErrMissingHeaders
	ErrBadTimestamp   = signature.ErrBadTimestamp
	// ErrMalformedTimestamp matches ErrBadTimestamp too; see signature.ErrMalformedTimestamp.
	ErrMalformedTimestamp = signature.ErrMalformedTimestamp
	ErrNoMatch            = signature.ErrNoMatch
	ErrNoSecret           = signature.ErrNoSecret
)

// Key turns a configured secret into the HMAC key; see signature.Key.
func Key(secret string) ([]byte, error) { return signature.Key(secret) }

// Sign returns the webhook-signature value ("v1,<base64 HMAC-SHA256>") of a message:
// the signed content is "<id>.<unix seconds>.<body>".
func Sign(secret, id string, ts time.Time, body []byte) (string, error) {
	return signature.Sign(secret, id, ts, body)
}

// ForemanSignature is the X-Foreman-Signature value:
// "sha256=<hex HMAC-SHA256(key, id + "." + unix seconds + "." + body)>", the same MAC as
// webhook-signature's, in hex.
func ForemanSignature(key []byte, id string, ts time.Time, body []byte) string {
	return signature.Foreman(key, id, ts, body)
}

// Verify checks a received webhook: the webhook-timestamp must be within tolerance of
// now (5 minutes when tolerance is 0, as in the Standard Webhooks libraries), and one of
// the space-separated "v1,<base64>" values of webhook-signature, or X-Foreman-Signature
// ("sha256=<hex>"), must be the HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>".
// An empty secret is refused with ErrNoSecret rather than checked against an empty key.
// Receivers should also dedupe on webhook-id.
func Verify(secret string, header http.Header, body []byte, tolerance time.Duration) error {
	return signature.Verify(secret, header, body, tolerance)
}
