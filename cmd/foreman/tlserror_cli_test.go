package main

import (
	"bufio"
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

// TestTransportErrorTextIsEscaped: a server's text that reaches the CLI in a transport
// error, not in an answer, is escaped too. A certificate's DNS names may hold any ASCII
// (ESC included), and Go's hostname error lists them as they are: whoever answers at
// FOREMAN_URL's name (a spoofed name on the LAN) with such a certificate would otherwise
// retitle the window and clear the screen of the user whose command fails.
func TestTransportErrorTextIsEscaped(t *testing.T) {
	t.Parallel()
	const hostile = "\x1b]0;PWNED\a\x1b[2J\r.example"
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "hostile"},
		DNSNames:     []string{hostile},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
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
	// A name, not the IP: Go lists a certificate's DNS names for a name it checks.
	vars := map[string]string{"FOREMAN_URL": "https://localhost:" + u.Port()}
	for _, args := range [][]string{{"jobs", "list"}, {"queue"}, {"jobs", "get", "x"}} {
		r := runCLI(t, vars, nil, nil, args...)
		if r.code == 0 {
			t.Fatalf("%v: succeeded against a certificate for another name", args)
		}
		out := r.stdout + r.stderr
		if i := strings.IndexFunc(out, func(c rune) bool { return c < 0x20 && c != '\n' || c >= 0x7f && c < 0xa0 }); i >= 0 {
			t.Fatalf("%v: control character %q printed raw: %q", args, out[i:i+1], out)
		}
		if !strings.Contains(out, `\x1b]0;PWNED\a\x1b[2J\r.example`) {
			t.Fatalf("%v: the certificate's name is not shown escaped: %q", args, out)
		}
	}
}

// TestNATSErrorTextIsEscaped: the refusal of a NATS server that FOREMAN_CLIENT_NATS_URL
// names (its -ERR text, quoted by the NATS client's error) is escaped on the line that
// says the command polls instead.
func TestNATSErrorTextIsEscaped(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_, _ = io.WriteString(conn, `INFO {"server_id":"x","version":"2.10.0","proto":1,"max_payload":1048576}`+"\r\n")
				_, _ = bufio.NewReader(conn).ReadString('\n') // CONNECT
				_, _ = io.WriteString(conn, "-ERR '\x1b]0;PWNED\a\x1b[2J'\r\n")
			}()
		}
	}()
	vars := map[string]string{"FOREMAN_URL": evilForeman(t), "FOREMAN_CLIENT_NATS_URL": "nats://" + ln.Addr().String()}
	r := runCLI(t, vars, nil, nil, "jobs", "watch", "x")
	if !strings.Contains(r.stderr, "polling instead") {
		t.Fatalf("the NATS refusal is not said: %q", r.stderr)
	}
	out := r.stdout + r.stderr
	if i := strings.IndexFunc(out, func(c rune) bool { return c < 0x20 && c != '\n' || c >= 0x7f && c < 0xa0 }); i >= 0 {
		t.Fatalf("control character %q printed raw: %q", out[i:i+1], out)
	}
	if !strings.Contains(r.stderr, `\x1b]0;PWNED\a\x1b[2J`) {
		t.Fatalf("the NATS server's text is not shown escaped: %q", r.stderr)
	}
}

// TestCommandErrorIsEscaped: the error a command ends with is escaped whatever it quotes,
// here the body of a refusal bench chat met, which it quotes as the server sent it.
func TestCommandErrorIsEscaped(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, "{\"error\":\"\x1b]0;PWNED\a\x1b[2J\r\u009b31m\"}")
	}))
	t.Cleanup(srv.Close)
	r := runCLI(t, map[string]string{"FOREMAN_URL": srv.URL}, nil, nil, "bench", "chat", "--direct", srv.URL, "-m", "m", "-n", "1", "--warmup", "0")
	if r.code == 0 {
		t.Fatal("bench chat succeeded against a server that answers 500")
	}
	if i := strings.IndexFunc(r.stderr, func(c rune) bool { return c < 0x20 && c != '\n' || c >= 0x7f && c < 0xa0 }); i >= 0 {
		t.Fatalf("control character %q printed raw: %q", r.stderr[i:i+1], r.stderr)
	}
	// The body is no JSON (raw control characters in a string): quoted as a page that is
	// not foreman's, its white space (the \r) folded.
	if !strings.Contains(r.stderr, `\x1b]0;PWNED\a\x1b[2J`) || !strings.Contains(r.stderr, `\u009b31m`) {
		t.Fatalf("the server's text is not shown escaped: %q", r.stderr)
	}
}

// TestCommandErrorKeepsItsLines: the escaping of a command's error keeps its lines, one
// per bad setting.
func TestCommandErrorKeepsItsLines(t *testing.T) {
	t.Parallel()
	r := runCLI(t, map[string]string{"FOREMAN_MAX_ATTEMPTS": "x", "FOREMAN_MAX_QUEUE": "y", "FOREMAN_DATA_DIR": t.TempDir()}, nil, nil, "serve")
	if r.code == 0 || !strings.Contains(r.stderr, "FOREMAN_MAX_ATTEMPTS") || !strings.Contains(r.stderr, "\nFOREMAN_MAX_QUEUE") && !strings.Contains(r.stderr, "\nFOREMAN_MAX_ATTEMPTS") {
		t.Fatalf("the bad settings are not said one per line: %q", r.stderr)
	}
}
