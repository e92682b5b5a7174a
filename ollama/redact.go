package ollama

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
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
	// One "@" past the scheme: the parsed userinfo is all of it. With more, a password
	// holding a "/" ended the parsed userinfo early and the rest of it reads as a path
	// ("nats://u:pa/ss@host" parses as user u of host "pa"... or "@:4222/s3cret@host" as
	// an empty user): the last "@" is taken below.
	rest := raw
	if i := strings.Index(raw, "://"); i >= 0 {
		rest = raw[i+3:]
	}
	if u, err := url.Parse(raw); err == nil && u.User != nil && strings.Count(rest, "@") == 1 {
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
		return RedactURL(u.String()) // an "@" in its path may end a user with a "/" in it
	}
	v := *u
	v.User = url.User(redactedUserinfo)
	return v.String()
}

// RedactURLs redacts each URL of a comma-separated list, as NATS URLs are given
// (FOREMAN_NATS_URL, the client's NATS URL). A comma may also stand in a password (NATS
// splits the list there too; CheckURLList refuses the lists that may hold one, but the
// refusal quotes them): in a list of URLs with schemes, a piece without one, or any piece
// after one that is no URL with a host, is taken for the rest of the URL before it; in a
// list without, a piece past the first holding an "@" makes the whole list one to redact.
// Either way a secret is never shown, at worst a host with it.
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
			if n := len(urls); n > 0 && (!strings.Contains(p, "://") || !hasHost(urls[n-1])) {
				urls[n-1] += "," + p
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

// hasHost reports whether raw parses as a URL with a host.
func hasHost(raw string) bool {
	u, err := url.Parse(strings.TrimSpace(raw))
	return err == nil && u.Host != ""
}

// CheckUserinfo refuses a URL with an "@" that url.Parse does not read as the end of
// its userinfo: a user or password holding a "/", "?" or "#" ("http://tok/en@host" is
// host "tok" and path "/en@host"). The secret would be taken for a host name, looked up
// and shown as one.
func CheckUserinfo(u *url.URL, raw string) error {
	if u.User == nil && strings.Contains(raw, "@") {
		return errors.New(`an "@" past the user: write "/", "?" and "#" in a user or password as %2F, %3F and %23`)
	}
	return nil
}

// natsSchemes are the schemes of a NATS URL.
var natsSchemes = []string{"nats", "tls", "ws", "wss"}

// CheckURLList refuses a comma-separated list of NATS URLs that is not one NATS reads
// as it was meant: an entry that is no URL with a host (the scheme, nats://, tls://,
// ws:// or wss://, optional),
// one whose user holds a "/", "?" or "#" (CheckUserinfo), and one that cannot be told from
// the part of a URL with a comma in its user or password, past the first with a user
// but not a NATS scheme of its own ("nats://alice:pa,ss@host", "u:p@a,u:p@b"). NATS would
// split such a URL at the comma and send a part of the secret as a credential, or look
// up a part of it as a host name. Its errors never quote the list.
func CheckURLList(list string) error {
	for i, p := range strings.Split(list, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		scheme, _, schemed := strings.Cut(p, "://")
		if at := strings.IndexByte(p, '@'); i > 0 && at >= 0 && (!strings.Contains(p[:at], "://") || !slices.Contains(natsSchemes, strings.ToLower(scheme))) {
			return fmt.Errorf("entry %d has a user but no NATS scheme: give each URL its own (nats://user:password@host:port), and write a comma in a user or password as %%2C", i+1)
		}
		if !schemed {
			p = "nats://" + p
		} else if !slices.Contains(natsSchemes, strings.ToLower(scheme)) {
			// NATS would dial any other scheme's host as a NATS server: an http:// URL
			// given by mistake would be tried for ever, its setting never named.
			return fmt.Errorf("entry %d is not a NATS URL: its scheme is none of nats://, tls://, ws:// and wss://", i+1)
		}
		u, err := url.Parse(p)
		if err != nil || u.Host == "" {
			return fmt.Errorf("entry %d is not a NATS URL (nats://[user:password@]host:port; a comma in a user or password is written %%2C)", i+1)
		}
		if err := CheckUserinfo(u, p); err != nil {
			return fmt.Errorf("entry %d: %w", i+1, err)
		}
	}
	return nil
}

// quotedText matches a Go-quoted string in an error message.
var quotedText = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// minBareSecret is the shortest secret RedactError replaces wherever it stands in a
// message, not only inside its URL: a shorter one ("nats", "1234") would be replaced in
// words and numbers that are not it, making the message unreadable and telling by the
// holes what the secret is.
const minBareSecret = 8

// RedactError returns err with the credentials of every URL in list (comma-separated,
// as RedactURLs takes it) taken out of its message, for errors of libraries that may
// quote the URL they were given (url.Parse's do, and nats.Connect passes them on): each
// URL is shown redacted, and a secret of minBareSecret bytes or more (the password, or a
// user name alone: a token) is replaced wherever it stands. A parse error of a URL of the
// list (or of a piece of it: NATS cuts a list at a comma in a password) shows the list
// redacted, and its fault without the parts of the URL it quotes (a port, an escape).
// errors.Is and errors.As still see err.
func RedactError(err error, list string) error {
	msg := err.Error()
	for e := err; e != nil; e = errors.Unwrap(e) {
		if ue, ok := e.(*url.Error); ok && ue.Op == "parse" && ofList(ue.URL, list) {
			fault := "invalid URL"
			if ue.Err != nil {
				fault = quotedText.ReplaceAllString(ue.Err.Error(), `"…"`)
			}
			msg = strings.ReplaceAll(msg, ue.Error(), fmt.Sprintf("parse %q: %s", RedactURLs(list), fault))
		}
	}
	for _, raw := range urlsAndPieces(list) {
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
		for _, s := range []string{u.User.String(), secret} {
			if len(s) >= minBareSecret {
				msg = strings.ReplaceAll(msg, s, redactedUserinfo)
			}
		}
		// Go's HTTP client quotes a URL with its password as "***", its user left.
		msg = strings.ReplaceAll(msg, "//"+u.User.Username()+":***@", "//"+redactedUserinfo+"@")
	}
	if msg == err.Error() {
		return err
	}
	return &redactedError{msg: msg, err: err}
}

// urlsAndPieces is list's URLs as urlList groups them, then its comma-separated pieces
// (a library may quote a URL cut at a comma): the whole URLs first, as a piece's
// replacement in a message would leave them unmatched.
func urlsAndPieces(list string) []string {
	return append(urlList(list), strings.Split(list, ",")...)
}

// ofList reports whether raw is a URL of list or a piece of it (cut at a comma), with or
// without the scheme a library gave an entry without one: NATS gives nats://, tls:// or
// ws(s)://.
func ofList(raw, list string) bool {
	if raw == "" {
		return false
	}
	_, rest, ok := strings.Cut(raw, "://")
	for _, p := range urlsAndPieces(list) {
		p = strings.TrimSpace(p)
		if p == raw || (ok && p == rest) {
			return true
		}
		if _, prest, pok := strings.Cut(p, "://"); pok && ok && prest == rest {
			return true
		}
	}
	return false
}

// redactedError is an error shown with another message.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }
