package app

import (
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/gateway"
)

// The start log names each program of the named tokens once, and never a token.
func TestTokenNames(t *testing.T) {
	ts := []gateway.NamedToken{{Program: "alice", Token: "tokA"}, {Program: "bob", Token: "tokB"}, {Program: "carol", Token: "tokC"}, {Program: "alice", Token: "tokA2"}}
	if got, hidden := tokenNames(ts); strings.Join(got, ",") != "alice,bob,carol" || hidden != 0 {
		t.Errorf("tokenNames %v, %d hidden", got, hidden)
	}
}

// TestATokenWrittenFirstIsNotLogged: an entry written token:name, whose token is a valid
// program name (openssl rand -hex 32, a UUID, a random base62 string), makes the token a
// program name; the start's log line naming the programs showed it, in the terminal and
// the service's log. Such names are counted and left out, and a warning says why.
func TestATokenWrittenFirstIsNotLogged(t *testing.T) {
	for _, token := range []string{
		"3f9a1c0e5b7d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a", // openssl rand -hex 32
		"123e4567-e89b-12d3-a456-426614174000",                             // a UUID
		"Zx81QmT7vLp0RkW3sYb5NcH9",                                         // base62
	} {
		ts := []gateway.NamedToken{{Program: "alice", Token: "tokA"}, {Program: token, Token: "bob"}}
		names, hidden := tokenNames(ts)
		if strings.Join(names, ",") != "alice" || hidden != 1 {
			t.Errorf("tokenNames with %s written first: %v, %d hidden; want [alice], 1 hidden", token, names, hidden)
		}
	}
	// Names people choose stay shown.
	for _, name := range []string{"alice", "batch-2024-11", "ci.nightly", "team_42", "ImportJob2024", "deadbeef", "release-candidate-builder-01"} {
		if secretLikeName(name) {
			t.Errorf("%q taken for a secret", name)
		}
	}
}

// TestPlainHTTPOffLoopbackWarns: foreman's HTTP has no TLS, so off loopback a bearer
// token crosses the network in clear with every request; the start says so, as it does
// for a NATS listener without TLS. On loopback (a TLS proxy on the same machine) it does
// not, nor without tokens (the INSECURE warning about no auth says more).
func TestPlainHTTPOffLoopbackWarns(t *testing.T) {
	named := []gateway.NamedToken{{Program: "alice", Token: "tokA"}}
	for _, c := range []struct {
		cfg  Config
		warn bool
	}{
		{Config{Addr: "0.0.0.0:8080", AuthToken: "s3cr3t-value"}, true},
		{Config{Addr: "192.168.1.5:8080", AuthTokens: named}, true},
		{Config{Addr: "[::]:8080", AuthToken: "s3cr3t-value"}, true},
		{Config{Addr: "127.0.0.1:8080", AuthToken: "s3cr3t-value"}, false},
		{Config{Addr: "localhost:8080", AuthTokens: named}, false},
		{Config{Addr: "0.0.0.0:8080"}, false},
	} {
		msg := plainHTTPWarning(c.cfg)
		if got := msg != ""; got != c.warn {
			t.Errorf("%s (token %v): warning %q, want one: %v", c.cfg.Addr, c.cfg.AuthToken != "" || len(c.cfg.AuthTokens) > 0, msg, c.warn)
		}
		if msg != "" && (!strings.Contains(msg, "in clear") || !strings.Contains(msg, c.cfg.Addr) || strings.Contains(msg, "s3cr3t")) {
			t.Errorf("warning %q: want it to name %s and say tokens cross in clear, without a token", msg, c.cfg.Addr)
		}
	}
}
