package signature_test

import (
	"errors"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook/signature"
)

func TestSignAndVerify(t *testing.T) {
	t.Parallel()
	body := []byte(`{"job_id":"01J","state":"done"}`)
	now := time.Now()
	for _, secret := range []string{"whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "raw secret"} {
		key, err := signature.Key(secret)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := signature.Sign(secret, "id-1", now, body)
		if err != nil || sig != signature.Standard(key, "id-1", now, body) {
			t.Fatalf("Sign(%q) = %q, %v; Standard says %q", secret, sig, err, signature.Standard(key, "id-1", now, body))
		}
		for name, value := range map[string]string{
			signature.HeaderSignature: sig,
			signature.HeaderForeman:   signature.Foreman(key, "id-1", now, body),
		} {
			h := http.Header{}
			h.Set(name, value)
			h.Set(signature.HeaderID, "id-1")
			h.Set(signature.HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
			if err := signature.Verify(secret, h, body, 0); err != nil {
				t.Errorf("%s with secret %q: %v", name, secret, err)
			}
			if err := signature.Verify(secret, h, append(body, ' '), 0); !errors.Is(err, signature.ErrNoMatch) {
				t.Errorf("%s, tampered body: %v, want ErrNoMatch", name, err)
			}
		}
	}
}

// TestForemanKnownAnswer pins the signed string "<id>.<timestamp>.<body>".
func TestForemanKnownAnswer(t *testing.T) {
	t.Parallel()
	// HMAC-SHA256("key", "msg_2VXc.1700000000.The quick brown fox jumps over the lazy dog"),
	// computed with Python's hmac module.
	got := signature.Foreman([]byte("key"), "msg_2VXc", time.Unix(1700000000, 0), []byte("The quick brown fox jumps over the lazy dog"))
	if want := "sha256=64c2e35dc15ffb77822441c2eb44bb9f59363bd03bc646a3367af19d3758335a"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestEmptySecretRefused(t *testing.T) {
	t.Parallel()
	for _, secret := range []string{"", "whsec_"} {
		if _, err := signature.Sign(secret, "id", time.Now(), nil); !errors.Is(err, signature.ErrNoSecret) {
			t.Errorf("Sign(%q) = %v, want ErrNoSecret", secret, err)
		}
		if err := signature.Verify(secret, http.Header{}, nil, 0); !errors.Is(err, signature.ErrNoSecret) {
			t.Errorf("Verify(%q) = %v, want ErrNoSecret", secret, err)
		}
	}
}

// TestStandardLibraryOnly: the public client imports this package, so it must bring no
// other module into a client's build.
func TestStandardLibraryOnly(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}",
		"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook/signature").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	if deps := strings.Fields(string(out)); len(deps) != 1 || !strings.HasSuffix(deps[0], "/signature") {
		t.Errorf("non-standard dependencies: %v", deps)
	}
}

// TestVerifyHeaders: each header Verify needs, the timestamp window (DefaultTolerance
// when given 0, either side of now) and the "v1," label are checked on their own.
func TestVerifyHeaders(t *testing.T) {
	t.Parallel()
	const secret, id = "raw secret", "id-1"
	key, err := signature.Key(secret)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"state":"done"}`)
	now := time.Now()
	mac := strings.TrimPrefix(signature.Standard(key, id, now, body), "v1,")
	header := func(id string, ts time.Time, sig, foreman string) http.Header {
		h := http.Header{}
		for name, v := range map[string]string{
			signature.HeaderID:        id,
			signature.HeaderTimestamp: strconv.FormatInt(ts.Unix(), 10),
			signature.HeaderSignature: sig,
			signature.HeaderForeman:   foreman,
		} {
			if v != "" {
				h.Set(name, v)
			}
		}
		return h
	}
	signedAt := func(ts time.Time) string { return signature.Standard(key, id, ts, body) }
	noTimestamp := header(id, now, "v1,"+mac, "")
	noTimestamp.Del(signature.HeaderTimestamp)
	for _, tc := range []struct {
		name   string
		header http.Header
		want   error
	}{
		{"all there", header(id, now, "v1,"+mac, ""), nil},
		{"no id", header("", now, "v1,"+mac, ""), signature.ErrMissingHeaders},
		{"no timestamp", noTimestamp, signature.ErrMissingHeaders},
		{"no signature", header(id, now, "", ""), signature.ErrMissingHeaders},
		{"a later v1 value matches", header(id, now, "v2,"+mac+" v1,bm9wZQ== bogus v1,"+mac, ""), nil},
		{"only a v2 value", header(id, now, "v2,"+mac, ""), signature.ErrNoMatch},
		{"only an unlabelled value", header(id, now, mac, ""), signature.ErrNoMatch},
		{"4 minutes old", header(id, now.Add(-4*time.Minute), signedAt(now.Add(-4*time.Minute)), ""), nil},
		{"6 minutes old", header(id, now.Add(-6*time.Minute), signedAt(now.Add(-6*time.Minute)), ""), signature.ErrBadTimestamp},
		{"4 minutes ahead", header(id, now.Add(4*time.Minute), signedAt(now.Add(4*time.Minute)), ""), nil},
		{"6 minutes ahead", header(id, now.Add(6*time.Minute), signedAt(now.Add(6*time.Minute)), ""), signature.ErrBadTimestamp},
	} {
		if err := signature.Verify(secret, tc.header, body, 0); !errors.Is(err, tc.want) {
			t.Errorf("%s: Verify = %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestVerifyTakesOnlyCanonicalTimestamps: webhook-timestamp is signed as the dispatcher
// writes it, plain decimal digits (a minus sign before a negative one); the same number
// written otherwise ("+1700000000", "01700000000") is refused with ErrMalformedTimestamp,
// which matches ErrBadTimestamp too, as is what is no number. They were accepted: Verify
// parsed the header and signed the number re-formatted, not the header as it came.
func TestVerifyTakesOnlyCanonicalTimestamps(t *testing.T) {
	t.Parallel()
	const secret, id = "raw secret", "id-1"
	key, err := signature.Key(secret)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"state":"done"}`)
	now := time.Now()
	secs := strconv.FormatInt(now.Unix(), 10)
	for _, ts := range []string{"+" + secs, "0" + secs, "00" + secs, "soon", secs + "s", "1e9", "0x" + strconv.FormatInt(now.Unix(), 16)} {
		h := http.Header{}
		h.Set(signature.HeaderID, id)
		h.Set(signature.HeaderTimestamp, ts)
		h.Set(signature.HeaderSignature, signature.Standard(key, id, now, body))
		h.Set(signature.HeaderForeman, signature.Foreman(key, id, now, body))
		err := signature.Verify(secret, h, body, 0)
		if !errors.Is(err, signature.ErrMalformedTimestamp) || !errors.Is(err, signature.ErrBadTimestamp) {
			t.Errorf("timestamp %q: Verify = %v; want ErrMalformedTimestamp, matching ErrBadTimestamp", ts, err)
			continue
		}
		if !strings.Contains(err.Error(), strconv.Quote(ts)) || strings.Contains(err.Error(), "outside the tolerance") {
			t.Errorf("timestamp %q: %q; want it to quote the timestamp and not call it outside the tolerance", ts, err)
		}
	}
	// Out of the window, a canonical timestamp is ErrBadTimestamp alone.
	old := now.Add(-time.Hour)
	h := http.Header{}
	h.Set(signature.HeaderID, id)
	h.Set(signature.HeaderTimestamp, strconv.FormatInt(old.Unix(), 10))
	h.Set(signature.HeaderSignature, signature.Standard(key, id, old, body))
	if err := signature.Verify(secret, h, body, 0); !errors.Is(err, signature.ErrBadTimestamp) || errors.Is(err, signature.ErrMalformedTimestamp) {
		t.Errorf("an hour old: Verify = %v; want ErrBadTimestamp and not ErrMalformedTimestamp", err)
	}
}
