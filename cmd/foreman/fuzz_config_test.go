package main

import (
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// fuzzedSettings are the settings FuzzServeSettings sets: every FOREMAN_* variable of
// serve but those naming files (it would open fuzzed paths on this machine).
func fuzzedSettings() []string {
	var names []string
	for _, s := range (&serveConfig{}).settings() {
		if !pathSettings[s.env] {
			names = append(names, s.env)
		}
	}
	return names
}

// secretsOf returns the secrets a value of setting env holds, as an error could quote
// them: a secret setting's value (each named token's token), a URL's password.
func secretsOf(env, val string) []string {
	var out []string
	switch {
	case env == "FOREMAN_AUTH_TOKENS":
		for _, entry := range strings.Split(val, ",") {
			name, tok, ok := strings.Cut(entry, ":")
			if ok {
				out = append(out, strings.TrimSpace(tok))
			}
			if name = strings.TrimSpace(name); broker.ValidateProgram(name) != nil {
				out = append(out, name) // no name: the token, written first (token:name)
			}
		}
	case secretSettings[env]:
		out = append(out, val)
	case urlSettings[env]:
		for _, raw := range strings.Split(val, ",") {
			raw = strings.TrimSpace(raw)
			if !strings.Contains(raw, "://") {
				raw = "nats://" + raw
			}
			if u, err := url.Parse(raw); err == nil && u.User != nil {
				if p, ok := u.User.Password(); ok {
					out = append(out, p)
				}
				rest := raw[strings.Index(raw, "://")+3:]
				if at := strings.LastIndex(rest, "@"); at >= 0 {
					if _, p, ok := strings.Cut(rest[:at], ":"); ok {
						out = append(out, p) // as written, escapes and all
					}
				}
			}
		}
	}
	var long []string
	for _, s := range out {
		if len(s) >= 6 {
			long = append(long, s)
		}
	}
	return long
}

// FuzzServeSettings sets two of serve's settings from the environment to fuzzed values and
// resolves the configuration as `foreman serve` does. Nothing panics, and a refusal never
// quotes a secret: a token, a password or the password of a URL (the messages go to the
// terminal and the service's log).
// Run with: go test -run '^$' -fuzz '^FuzzServeSettings$' -fuzztime 30s ./cmd/foreman
func FuzzServeSettings(f *testing.F) {
	names := fuzzedSettings()
	index := func(env string) uint8 {
		for i, n := range names {
			if n == env {
				return uint8(i)
			}
		}
		f.Fatalf("%s is not among the fuzzed settings", env)
		return 0
	}
	f.Add(index("FOREMAN_OLLAMA_URL"), "http://user:s3cret-pass@mac.lan:11434", index("FOREMAN_ADDR"), "0.0.0.0:8080")
	f.Add(index("FOREMAN_OLLAMA_URL"), "http://user:s3cret/pass@mac.lan:99999", index("FOREMAN_AUTH_TOKEN"), "tok # comment")
	f.Add(index("FOREMAN_NATS_URL"), "nats://a:passw0rd@h1:4222,nats://b:passw0rd2@h2", index("FOREMAN_NATS_REPLICAS"), "3")
	f.Add(index("FOREMAN_NATS_URL"), "a:passw0rd@h1:4222, b:passw0rd2@h2", index("FOREMAN_NATS_LISTEN"), "127.0.0.1:4222")
	f.Add(index("FOREMAN_AUTH_TOKENS"), "alice:tok-of-alice,bob:tok-of-bob", index("FOREMAN_AUTH_TOKEN"), "single-token")
	f.Add(index("FOREMAN_AUTH_TOKENS"), "abc+/def==:alice", index("FOREMAN_MAX_WAIT"), "1h")
	f.Add(index("FOREMAN_AUTH_TOKENS"), "alice smith:secret-token", index("FOREMAN_JOB_TTL"), "1s")
	f.Add(index("FOREMAN_OLLAMA_TOKEN"), "tok\r\nen-secret", index("FOREMAN_WEBHOOK_SECRET"), "whsec_!!notbase64")
	f.Add(index("FOREMAN_NATS_PASSWORD"), " secret-pass ", index("FOREMAN_NATS_USER"), "u")
	f.Add(index("FOREMAN_WEBHOOK_ALLOW_NETS"), "10.0.0.0/8, ::1/129", index("FOREMAN_ORIGINS"), "http://a, *")
	f.Add(index("FOREMAN_MAX_BODY"), "9223372036854775807", index("FOREMAN_MAX_BODY_BYTES_IN_FLIGHT"), "1")
	f.Add(index("FOREMAN_TARGET_NAME"), "mac-1", index("FOREMAN_PPROF_ADDR"), "[::1]:6060")
	f.Fuzz(func(t *testing.T, i uint8, v string, j uint8, w string) {
		env := map[string]string{names[int(i)%len(names)]: v}
		if e := names[int(j)%len(names)]; env[e] == "" {
			env[e] = w
		}
		cfg := &serveConfig{}
		set := cfg.settings()
		fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
		bindFlags(fs, set)
		err := resolve(fs, set, func(k string) string { return env[k] })
		if err == nil {
			err = cfg.finish()
		}
		if err == nil {
			return
		}
		msg := err.Error()
		for k, val := range env {
			for _, s := range secretsOf(k, val) {
				if shownElsewhere(env, s) {
					continue
				}
				if strings.Contains(msg, s) {
					t.Fatalf("%s=%q: the refusal quotes the secret %q: %s", k, val, s, msg)
				}
			}
		}
	})
}

// shownElsewhere reports whether a setting holds secret's text outside any userinfo
// too (":pw@,pw", a password then an entry of the same text; or another setting, not a
// secret one, whose value holds that text): a refusal's showing of it is that text's, not the secret's.
func shownElsewhere(env map[string]string, secret string) bool {
	for k, v := range env {
		switch {
		case secretSettings[k], k == "FOREMAN_AUTH_TOKENS":
			continue // secrets all through
		case urlSettings[k]:
			v = withoutUserinfo(v)
		}
		// As it is, or as a refusal quotes it (%q: "\x80" then "0000" shows "80000").
		if strings.Contains(v, secret) || strings.Contains(strconv.Quote(v), secret) {
			return true
		}
	}
	return false
}

// withoutUserinfo is a comma-separated list with each piece's userinfo (up to its last
// "@", past a scheme) taken out: what of it no redaction hides.
func withoutUserinfo(list string) string {
	pieces := strings.Split(list, ",")
	for i, p := range pieces {
		scheme, rest := "", p
		if j := strings.Index(p, "://"); j >= 0 {
			scheme, rest = p[:j+3], p[j+3:]
		}
		if at := strings.LastIndexByte(rest, '@'); at >= 0 {
			rest = rest[at+1:]
		}
		pieces[i] = scheme + rest
	}
	return strings.Join(pieces, ",")
}
