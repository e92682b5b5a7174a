package webhook

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"

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
	// HMAC-SHA256("key", "msg_2VXc.1700000000.The quick brown fox jumps over the lazy dog"),
	// computed with Python's hmac module.
	got := ForemanSignature([]byte("key"), "msg_2VXc", time.Unix(1700000000, 0), []byte("The quick brown fox jumps over the lazy dog"))
	want := "sha256=64c2e35dc15ffb77822441c2eb44bb9f59363bd03bc646a3367af19d3758335a"
	if got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// foremanOnly is a delivery signed with X-Foreman-Signature alone, as a receiver that
// checks only that header sees it.
func foremanOnly(t *testing.T, secret, id string, ts time.Time, body []byte) http.Header {
	t.Helper()
	key, err := Key(secret)
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(HeaderForeman, ForemanSignature(key, id, ts, body))
	return h
}

// TestForemanSignatureCannotBeReplayed: X-Foreman-Signature covers the id and the
// timestamp, so a captured delivery sent again under a fresh timestamp or another id
// fails, and an old one fails on its timestamp.
func TestForemanSignatureCannotBeReplayed(t *testing.T) {
	t.Parallel()
	const secret = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"
	body := []byte(`{"job_id":"01J","state":"done"}`)
	sent := time.Now().Add(-time.Hour)
	captured := foremanOnly(t, secret, "01J-3", sent, body)

	if err := Verify(secret, captured, body, 2*time.Hour); err != nil {
		t.Fatalf("the delivery itself is rejected: %v", err)
	}
	if err := Verify(secret, captured, body, 0); !errors.Is(err, ErrBadTimestamp) {
		t.Fatalf("an hour-old delivery: got %v, want ErrBadTimestamp", err)
	}
	fresh := captured.Clone()
	fresh.Set(HeaderTimestamp, strconv.FormatInt(time.Now().Unix(), 10))
	if err := Verify(secret, fresh, body, 0); !errors.Is(err, ErrNoMatch) {
		t.Fatalf("replayed under a fresh timestamp: got %v, want ErrNoMatch", err)
	}
	otherID := captured.Clone()
	otherID.Set(HeaderID, "01J-4")
	if err := Verify(secret, otherID, body, 2*time.Hour); !errors.Is(err, ErrNoMatch) {
		t.Fatalf("replayed under another id: got %v, want ErrNoMatch", err)
	}
	// What a receiver checking only X-Foreman-Signature computes: it must differ too.
	key, _ := Key(secret)
	if ForemanSignature(key, "01J-3", time.Now(), body) == captured.Get(HeaderForeman) {
		t.Fatal("X-Foreman-Signature does not depend on the timestamp")
	}
}

// TestSignaturesAgree: X-Foreman-Signature is webhook-signature's MAC in hex.
func TestSignaturesAgree(t *testing.T) {
	t.Parallel()
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	body := []byte(`{"a":1}`)
	ts := time.Now()
	h := signedHeader(t, secret, "id-9", ts, body)
	key, _ := Key(secret)
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(h.Get(HeaderSignature), "v1,"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ForemanSignature(key, "id-9", ts, body), "sha256="+hex.EncodeToString(raw); got != want {
		t.Fatalf("X-Foreman-Signature %s, webhook-signature's MAC %s", got, want)
	}
}

func TestVerifyRefusesAnEmptySecret(t *testing.T) {
	t.Parallel()
	body := []byte(`{"a":1}`)
	// A delivery signed with the empty key: an empty secret must not accept it.
	h := http.Header{}
	h.Set(HeaderID, "id-1")
	h.Set(HeaderTimestamp, strconv.FormatInt(time.Now().Unix(), 10))
	h.Set(HeaderSignature, "v1,"+b64(mac(nil, "id-1", time.Now().Unix(), body)))
	for _, secret := range []string{"", "whsec_"} {
		if err := Verify(secret, h, body, 0); !errors.Is(err, ErrNoSecret) {
			t.Errorf("Verify(%q) = %v, want ErrNoSecret", secret, err)
		}
		if _, err := Sign(secret, "id-1", time.Now(), body); !errors.Is(err, ErrNoSecret) {
			t.Errorf("Sign(%q) = %v, want ErrNoSecret", secret, err)
		}
	}
	if _, err := New(Config{Store: &broker.Store{}, Secret: "whsec_"}); !errors.Is(err, ErrNoSecret) {
		t.Errorf("New with secret whsec_ = %v, want ErrNoSecret", err)
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
