package app

import (
	"testing"
	"time"

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
