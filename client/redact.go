package client

import (
	"net/url"
	"strings"
)

// redactURL returns raw fit for an error message: a password in its userinfo, or a user
// name alone (a token), becomes "xxxxx"; a string that does not parse loses everything
// between "://" and its last "@".
func redactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		v := *u
		if _, ok := u.User.Password(); ok {
			v.User = url.UserPassword(u.User.Username(), "xxxxx")
		} else {
			v.User = url.User("xxxxx")
		}
		return v.String()
	}
	scheme, rest := "", raw
	if i := strings.Index(raw, "://"); i >= 0 {
		scheme, rest = raw[:i+3], raw[i+3:]
	}
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		return scheme + "xxxxx" + rest[at:]
	}
	return raw
}

// redactURLs redacts each URL of a comma-separated list (as nats.Connect takes).
func redactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		parts[i] = redactURL(p)
	}
	return strings.Join(parts, ",")
}
