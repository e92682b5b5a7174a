package ollama

import (
	"errors"
	"net/url"
	"strconv"
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
// (FOREMAN_NATS_URL, the client's NATS URL). A comma may also stand in a password (NATS
// splits the list there too, so such a setting is refused, but the refusal quotes it):
// in a list of URLs with schemes, a piece without one is taken for the rest of the URL
// before it; in a list without, a piece past the first holding an "@" makes the whole
// list one to redact. Either way a secret is never shown, at worst a host with it.
func RedactURLs(list string) string {
	urls := urlList(list)
	for i, u := range urls {
		urls[i] = RedactURL(u)
	}
	return strings.Join(urls, ",")
}

// urlList splits a comma-separated list of URLs as RedactURLs redacts it.
func urlList(list string) []string {
	pieces := strings.Split(list, ",")
	switch {
	case strings.Contains(pieces[0], "://"):
		var urls []string
		for _, p := range pieces {
			if len(urls) > 0 && !strings.Contains(p, "://") {
				urls[len(urls)-1] += "," + p
				continue
			}
			urls = append(urls, p)
		}
		return urls
	case strings.Contains(strings.Join(pieces[1:], ","), "@"):
		return []string{list}
	}
	return pieces
}

// RedactError returns err with the credentials of every URL in list (comma-separated,
// as RedactURLs takes it) replaced by "xxxxx" in its message, for errors of libraries
// that may quote the URL they were given (url.Parse's do, and nats.Connect passes them
// on): the URL, its userinfo, its secret (the password, or a user name alone: a token),
// and each comma-separated part of that secret (a library splitting the list may quote
// a URL cut there). A bad escape's quoted text, part of the URL, goes too. errors.Is and
// errors.As still see err.
func RedactError(err error, list string) error {
	msg := err.Error()
	var esc url.EscapeError
	if errors.As(err, &esc) {
		msg = strings.ReplaceAll(msg, strconv.Quote(string(esc)), `"xxxxx"`)
	}
	// The whole URLs first: a part's replacement would leave them unmatched.
	for _, raw := range append(urlList(list), strings.Split(list, ",")...) {
		raw = strings.TrimSpace(raw)
		if shown := RedactURL(raw); shown != raw {
			msg = strings.ReplaceAll(msg, raw, shown)
		}
		if !strings.Contains(raw, "://") {
			raw = "nats://" + raw
		}
		u, perr := url.Parse(raw)
		if perr != nil || u.User == nil {
			continue
		}
		secret, ok := u.User.Password()
		if !ok {
			secret = u.User.Username() // a token
		}
		for _, s := range append([]string{u.User.String(), secret}, strings.Split(secret, ",")...) {
			if s != "" {
				msg = strings.ReplaceAll(msg, s, redactedUserinfo)
			}
		}
	}
	if msg == err.Error() {
		return err
	}
	return &redactedError{msg: msg, err: err}
}

// redactedError is an error shown with another message.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }
