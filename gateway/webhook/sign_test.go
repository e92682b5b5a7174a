package webhook

import (
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

func signedHeader(t *testing.T, secret, id string, ts time.Time, body []byte) http.Header {
	t.Helper()
	sig, err := Sign(secret, id, ts, body)
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(HeaderSignature, sig)
	return h
}

func TestSignVerifiedByStandardWebhooksLibrary(t *testing.T) {
	t.Parallel()
	body := []byte(`{"job_id":"01J","state":"done"}`)
	const b64Secret = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

	h := signedHeader(t, "whsec_"+b64Secret, "01J-7", time.Now(), body)
	wh, err := standardwebhooks.NewWebhook("whsec_" + b64Secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := wh.Verify(body, h); err != nil {
		t.Fatalf("library rejects a whsec_ signature: %v", err)
	}
	if err := wh.Verify([]byte(`{"job_id":"01J","state":"failed"}`), h); err == nil {
		t.Fatal("library accepted a tampered body")
	}

	// A secret without the prefix is used as raw bytes.
	h = signedHeader(t, "plain secret", "01J-8", time.Now(), body)
	raw, _ := standardwebhooks.NewWebhookRaw([]byte("plain secret"))
	if err := raw.Verify(body, h); err != nil {
		t.Fatalf("library rejects a raw-secret signature: %v", err)
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	body := []byte(`{"a":1}`)
	secret := "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"
	h := signedHeader(t, secret, "id-1", time.Now(), body)
	if err := Verify(secret, h, body, 0); err != nil {
		t.Fatalf("own signature rejected: %v", err)
	}
	// Rotation: several signatures, one matching.
	h2 := h.Clone()
	h2.Set(HeaderSignature, "v1,AAAA "+h.Get(HeaderSignature))
	if err := Verify(secret, h2, body, 0); err != nil {
		t.Fatalf("matching signature among several rejected: %v", err)
	}
	if err := Verify("whsec_b3RoZXI=", h, body, 0); !errors.Is(err, ErrNoMatch) {
		t.Fatalf("wrong secret: got %v, want ErrNoMatch", err)
	}
	if err := Verify(secret, h, []byte(`{"a":2}`), 0); !errors.Is(err, ErrNoMatch) {
		t.Fatalf("tampered body: got %v, want ErrNoMatch", err)
	}
	old := signedHeader(t, secret, "id-1", time.Now().Add(-10*time.Minute), body)
	if err := Verify(secret, old, body, 5*time.Minute); !errors.Is(err, ErrBadTimestamp) {
		t.Fatalf("old timestamp: got %v, want ErrBadTimestamp", err)
	}
	if err := Verify(secret, http.Header{}, body, 0); !errors.Is(err, ErrMissingHeaders) {
		t.Fatalf("no headers: got %v, want ErrMissingHeaders", err)
	}
	if _, err := Key("whsec_not base64!"); err == nil {
		t.Fatal("a whsec_ secret that is not base64 was accepted")
	}
}

func TestForemanSignature(t *testing.T) {
	t.Parallel()
	// HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"), a published vector.
	got := ForemanSignature([]byte("key"), []byte("The quick brown fox jumps over the lazy dog"))
	want := "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
	if got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	d := &Dispatcher{cfg: Config{BaseDelay: time.Second, MaxDelay: time.Minute}}
	for n, base := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 4: 8 * time.Second} {
		got := d.backoff(n, 0)
		if got < base*8/10 || got > base*12/10 {
			t.Errorf("attempt %d: wait %s, want %s ±20%%", n, got, base)
		}
	}
	if got := d.backoff(30, 0); got != time.Minute {
		t.Errorf("long backoff %s, want the cap of 1m", got)
	}
	if got := d.backoff(1, 20*time.Second); got != 20*time.Second {
		t.Errorf("Retry-After 20s gave %s", got)
	}
	if got := d.backoff(1, time.Hour); got != time.Minute {
		t.Errorf("Retry-After 1h gave %s, want the cap", got)
	}
	now := time.Now()
	if got := parseRetryAfter("7", now); got != 7*time.Second {
		t.Errorf("Retry-After 7: %s", got)
	}
	if got := parseRetryAfter(now.Add(90*time.Second).UTC().Format(http.TimeFormat), now); got < 80*time.Second || got > 91*time.Second {
		t.Errorf("Retry-After date: %s", got)
	}
	if got := parseRetryAfter("soon", now); got != 0 {
		t.Errorf("Retry-After soon: %s", got)
	}
}
