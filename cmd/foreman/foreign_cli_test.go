package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// nginxPage is the start of the page nginx answers a 502 with; foreignServer pads it
// past what the client reads of an error answer.
const nginxPage = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.27.0</center>\r\n"

// foreignServer answers every request with status and body, as a proxy or a captive
// portal in front of (or instead of) foreman does.
func foreignServer(t *testing.T, status int, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestForeignErrorAnswerIsNamed: an error answer that is no foreman error (a proxy's
// 502 page, a portal, an empty 503) is said with its status and a short excerpt, as not
// looking like foreman; the CLI printed up to 64 KiB of the body, escaped on one line,
// with no status, as if foreman had said it.
func TestForeignErrorAnswerIsNamed(t *testing.T) {
	t.Parallel()
	page := foreignServer(t, http.StatusBadGateway, nginxPage+strings.Repeat("<!-- padding -->\r\n", 4<<10)+"</body></html>")
	empty := foreignServer(t, http.StatusServiceUnavailable, "")
	for _, tc := range []struct {
		url, status, body string
	}{
		{page, "502 Bad Gateway", `"<html> <head><title>502 Bad Gateway</title></head>`},
		{empty, "503 Service Unavailable", "an empty answer"},
	} {
		for _, args := range [][]string{{"jobs", "list"}, {"jobs", "get", "01JGJ4Q2R0000000000000000A"}, {"queue"}, {"ps"}, {"tags"}, {"chat", "-m", "m", "hi"}} {
			r := runCLI(t, map[string]string{"FOREMAN_URL": tc.url}, nil, nil, args...)
			if r.code == 0 {
				t.Fatalf("%v: succeeded", args)
			}
			want := tc.url + " answered " + tc.status + " with " + tc.body
			if !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "does not look like foreman") {
				t.Errorf("%v: stderr %q\nwant it to say %q and that it does not look like foreman", args, r.stderr, want)
			}
			if len(r.stderr) > 600 || strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("%v: %d bytes on %d lines, want one short line: %q", args, len(r.stderr), strings.Count(r.stderr, "\n"), r.stderr)
			}
		}
	}
}

// TestPlainHTTPToATLSAddress: Go's (and nginx's) answer to plain HTTP on a TLS port is
// named for what it is: use https://.
func TestPlainHTTPToATLSAddress(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	plain := "http://" + srv.Listener.Addr().String()
	r := runCLI(t, map[string]string{"FOREMAN_URL": plain}, nil, nil, "jobs", "list")
	if r.code == 0 || !strings.Contains(r.stderr, "400 Bad Request") || !strings.Contains(r.stderr, "use https://") {
		t.Fatalf("exit %d, stderr %q; want the 400 and a hint to use https://", r.code, r.stderr)
	}
}

// tlsServerWith serves TLS with a self-signed certificate for names, valid from
// notBefore to notAfter; the CLI trusts no such certificate.
func tlsServerWith(t *testing.T, names []string, notBefore, notAfter time.Time) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "foreman"},
		DNSNames:     names,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		t.Error("the request passed the TLS handshake")
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Port()
}

// TestUnreachableHintByCause: a request that did not reach foreman gets the hint of its
// cause. A TLS certificate the CLI does not accept was answered "is foreman serve
// running?", while foreman (behind its TLS proxy) may well run.
func TestUnreachableHintByCause(t *testing.T) {
	t.Parallel()
	now := time.Now()
	good := tlsServerWith(t, []string{"localhost"}, now.Add(-time.Hour), now.Add(time.Hour))
	other := tlsServerWith(t, []string{"foreman.example"}, now.Add(-time.Hour), now.Add(time.Hour))
	expired := tlsServerWith(t, []string{"localhost"}, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	plain := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(plain.Close)
	for _, tc := range []struct {
		name, url, want string
	}{
		{"unknown authority", "https://localhost:" + good, "signed by an authority this machine does not trust"},
		{"name mismatch", "https://localhost:" + other, "not for the name in --url/FOREMAN_URL"},
		{"expired", "https://localhost:" + expired, "has expired or is not valid yet"},
		{"plain HTTP on https://", "https://" + plain.Listener.Addr().String(), "does not speak TLS: use http://"},
		{"refused", "http://127.0.0.1:1", `is "foreman serve" running?`},
	} {
		r := runCLI(t, map[string]string{"FOREMAN_URL": tc.url}, nil, nil, "jobs", "list")
		if r.code == 0 || !strings.Contains(r.stderr, "cannot reach") || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: exit %d, stderr %q; want %q", tc.name, r.code, r.stderr, tc.want)
		}
		if tc.name != "refused" && strings.Contains(r.stderr, "foreman serve") {
			t.Errorf("%s: asks whether foreman runs: %q", tc.name, r.stderr)
		}
	}
}

// TestUnreachableHintForDNS: a host name DNS does not know is named as such (checked on
// the error itself: a lookup would leave loopback).
func TestUnreachableHintForDNS(t *testing.T) {
	t.Parallel()
	err := &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "foremn.lan", IsNotFound: true}}
	if got := unreachableHint(err); !strings.Contains(got, "no such host name") {
		t.Fatalf("hint %q", got)
	}
}

// TestCaptivePortalIsNamed: a 200 answer that is no foreman JSON (a captive portal's
// login page) is said as an error answer that is not foreman's is, with its status,
// Content-Type and start; the CLI said "client: decode GET /jobs: the answer is not a
// JSON object" (and `chat` "client: decode chat chunk: not a JSON object").
func TestCaptivePortalIsNamed(t *testing.T) {
	t.Parallel()
	portal := foreignServer(t, http.StatusOK, "<!DOCTYPE html>\n<html><head><title>Guest Wi-Fi</title></head>"+strings.Repeat("<p>terms</p>\n", 4<<10))
	for _, args := range [][]string{{"jobs", "list"}, {"jobs", "get", "01JGJ4Q2R0000000000000000A"}, {"queue"}, {"ps"}, {"tags"}, {"chat", "-m", "m", "hi"}} {
		r := runCLI(t, map[string]string{"FOREMAN_URL": portal}, nil, nil, args...)
		if r.code == 0 {
			t.Fatalf("%v: succeeded", args)
		}
		want := portal + ` answered 200 OK (Content-Type text/html) with "<!DOCTYPE html> <html><head><title>Guest Wi-Fi`
		if !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "does not look like foreman") || !strings.Contains(r.stderr, "check --url/FOREMAN_URL") {
			t.Errorf("%v: stderr %q\nwant it to say %q, that it does not look like foreman, and what to check", args, r.stderr, want)
		}
		if len(r.stderr) > 600 || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: %d bytes on %d lines, want one short line: %q", args, len(r.stderr), strings.Count(r.stderr, "\n"), r.stderr)
		}
	}
}
