package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"unicode/utf8"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// unreachableHint is what a person can do about a request that did not reach foreman,
// by its cause. "is foreman serve running?" is the answer to a refused connection only: a
// certificate this machine does not accept, a name DNS does not know or a host that
// does not answer at all say nothing of whether foreman runs, and that question sent
// people to restart a foreman that was fine.
func unreachableHint(err error) string {
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		record    tls.RecordHeaderError
		dns       *net.DNSError
	)
	switch {
	case errors.As(err, &unknownCA):
		return "the TLS certificate there is signed by an authority this machine does not trust (foreman may well be running): add that CA to this machine's trust store, or point SSL_CERT_FILE at it"
	case errors.As(err, &hostname):
		return "the TLS certificate there is not for the name in --url/FOREMAN_URL (foreman may well be running): use a name the certificate holds"
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "the TLS certificate there has expired or is not valid yet (foreman may well be running): renew it, or check this machine's clock"
	case errors.As(err, &invalid):
		return "the TLS certificate there is not valid for a server (foreman may well be running)"
	case errors.Is(err, http.ErrSchemeMismatch), errors.As(err, &record):
		return "that address does not speak TLS: use http:// in --url/FOREMAN_URL"
	case errors.As(err, &dns) && dns.IsNotFound:
		return "no such host name: check the host in --url/FOREMAN_URL"
	case errors.As(err, &dns):
		return "the host name could not be looked up: is DNS reachable from here?"
	case errors.Is(err, syscall.ECONNREFUSED):
		return `is "foreman serve" running?`
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "no route to that host from here: is it up, and on a network this machine reaches?"
	case isNetTimeout(err):
		return "the host did not answer: it is down, or a firewall drops the connection"
	case errors.Is(err, syscall.ECONNRESET):
		return "the connection was reset before foreman had the request: a firewall, or a server that is not foreman, at that address?"
	}
	return `is "foreman serve" running?`
}

func isNetTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// foreignExcerpt bounds the part of a foreign answer shown.
const foreignExcerpt = 120

// foreignAnswer is the error for an error answer that is no foreman error (Raw): the
// status, which foreman's words would have made needless, and the start of the body, on
// one line. Such a body is a proxy's 502 page, a captive portal, a router's plain text:
// printed whole it was up to 64 KiB of escaped HTML with no status, and looked like a
// message of foreman's.
func foreignAnswer(url string, ae *client.APIError) error {
	return notForeman(url, ae.Status, "", ae.Message)
}

// foreignSuccess is the error for a success answer that is no foreman JSON (a captive
// portal's login page answered with 200): said as foreignAnswer says an error answer,
// with its Content-Type. The client's words were "the answer is not a JSON object",
// which sent people looking for a bug in foreman.
func foreignSuccess(url string, fe *client.ForeignAnswerError) error {
	return notForeman(url, fe.Status, fe.ContentType, fe.Excerpt)
}

// notForeman says that url answered status (with contentType, when known) and body,
// which is not foreman's, and what to check.
func notForeman(url string, code int, contentType, text string) error {
	status := fmt.Sprintf("%d %s", code, http.StatusText(code))
	if contentType != "" {
		status += " (Content-Type " + termSafe(contentType) + ")"
	}
	ae := &client.APIError{Status: code, Message: text}
	body := "an empty answer"
	if ex := strings.Join(strings.Fields(ae.Message), " "); ex != "" {
		if utf8.RuneCountInString(ex) > foreignExcerpt {
			ex = string([]rune(ex)[:foreignExcerpt]) + "…"
		}
		body = `"` + termSafe(ex) + `"`
	}
	hint := "another server or a proxy answered at that address: check --url/FOREMAN_URL, and whatever stands between"
	switch {
	case strings.Contains(ae.Message, "HTTP request to an HTTPS server"), strings.Contains(ae.Message, "plain HTTP request was sent to HTTPS port"):
		hint = "that address speaks TLS: use https:// in --url/FOREMAN_URL"
	case ae.Status == http.StatusNotFound || ae.Status == http.StatusMethodNotAllowed:
		hint += " (or a foreman older than this command)"
	case ae.Status/100 == 2:
		hint += " (a network that wants a login in a browser first?)"
	}
	return fmt.Errorf("%s answered %s with %s, which does not look like foreman: %s", url, status, body, hint)
}
