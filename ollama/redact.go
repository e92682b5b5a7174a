package ollama

import (
	"net/url"
	"strings"
)

// redactedUserinfo replaces secrets in a shown URL, as url.URL.Redacted does.
const redactedUserinfo = "xxxxx"

// RedactURL returns raw fit to show in logs, errors and /healthz: its userinfo, user
// name and password alike, becomes "xxxxx". A user name alone is how a token rides in a
// URL (NATS reads "nats://<token>@host" so, and an HTTP client sends it as basic auth),
// and a user name beside a password is half a login, not for the unauthenticated
// /healthz. Any other string with an "@" loses everything between "://" (or its start)
// and its last "@". A query or fragment, where a
// proxy's key may ride ("?key=..."), becomes "?xxxxx" (or "#xxxxx"). The rest is returned
// as is.
func RedactURL(raw string) string {
	shown := redactUserinfo(raw)
	// Past the userinfo (redacted above, so holding neither), the first "?" or "#" starts
	// the query or the fragment.
	if i := strings.IndexAny(shown, "?#"); i >= 0 && i < len(shown)-1 {
		return shown[:i+1] + redactedUserinfo
	}
	return shown
}

// redactUserinfo is raw with its userinfo redacted (see RedactURL).
func redactUserinfo(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		return redacted(u)
	}
	// Unparsable, or parsed without userinfo yet holding an "@": "user:pw@host:4222" without a
	// scheme (which NATS accepts) parses as an opaque URL, and a password with a "/"
	// in it as a path.
	rest, scheme := raw, ""
	if i := strings.Index(raw, "://"); i >= 0 {
		scheme, rest = raw[:i+3], raw[i+3:]
	}
	// A password may hold any character, so the last "@" of all is taken.
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return raw
	}
	return scheme + redactedUserinfo + rest[at:]
}

// redacted is u as a string with its userinfo redacted (see RedactURL).
func redacted(u *url.URL) string {
	if u.User == nil {
		return u.String()
	}
	v := *u
	v.User = url.User(redactedUserinfo)
	return v.String()
}

// RedactURLs redacts each URL of a comma-separated list, as NATS URLs are given
// (FOREMAN_NATS_URL, the client's NATS URL).
func RedactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		parts[i] = RedactURL(p)
	}
	return strings.Join(parts, ",")
}
