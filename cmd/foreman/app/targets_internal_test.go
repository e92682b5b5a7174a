package app

import (
	"slices"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// The URL published to the other foremen carries no credentials at all (not even
// redacted ones, which they would send).
func TestPublishedURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"http://studio.lan:11434":             "http://studio.lan:11434",
		"http://steve:hunter2@studio:11434/x": "http://studio:11434/x",
		"https://tok@mini.lan":                "https://mini.lan",
	} {
		if got := publishedURL(in); got != want {
			t.Errorf("publishedURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// A target's entry outlives the gap between two polls of a hung target (the first ends at
// its timeout, the next starts at the following tick), whatever the interval: with a 2s
// interval it lived 6s, and a hung Mac's models were "not found" half the time.
func TestTargetEntryOutlivesAHungPoll(t *testing.T) {
	t.Parallel()
	for _, poll := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 30 * time.Second} {
		if ttl, gap := targetTTL(poll), ollama.DefaultPollTimeout+poll; ttl <= gap {
			t.Errorf("poll interval %s: entry lives %s, not past the %s between two polls of a hung target", poll, ttl, gap)
		}
	}
	if ttl := targetTTL(30 * time.Second); ttl != 90*time.Second {
		t.Errorf("default poll interval: entry lives %s, want 90s as before", ttl)
	}
}

// The protected endpoints of the published targets: a target at a loopback URL counts on
// the machine addresses its foreman published beside it; each endpoint once.
func TestEndpointsOfTargets(t *testing.T) {
	t.Parallel()
	got := endpointsOf([]broker.Target{
		{Name: "mac-a", URL: "http://127.0.0.1:11434", Addrs: []string{"192.168.1.20"}},
		{Name: "mac-b", URL: "http://mac-b.lan:11434", Addrs: []string{"192.168.1.30"}},
		{Name: "mac-c", URL: "http://192.168.1.20:11434"},
	})
	if want := []string{"127.0.0.1:11434", "192.168.1.20:11434", "mac-b.lan:11434"}; !slices.Equal(got, want) {
		t.Fatalf("endpoints %v, want %v", got, want)
	}
}
