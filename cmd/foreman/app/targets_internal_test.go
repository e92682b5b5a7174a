package app

import "testing"

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
