package main

import (
	"strings"
	"testing"
)

// Live top, in a real terminal (tmux), says whom it is waiting for until the first
// answer comes: against a foreman that takes the connection and does not answer, the
// screen stayed blank for the whole first refresh (10 s), which looked hung.
func TestLiveTopSaysItWaitsForTheFirstAnswer(t *testing.T) {
	t.Parallel()
	srv := hungForeman(t, nil)
	capture := tmuxTop(t, srv.URL, 100, 20)
	var rows []string
	waitFor(t, "a frame", func() bool {
		rows, _ = capture()
		return strings.Contains(strings.Join(rows, "\n"), "(q quits)")
	})
	shown := strings.Join(rows, "\n")
	if !strings.HasPrefix(rows[0], "foreman "+srv.URL) || !strings.Contains(shown, "waiting for the first answer from "+srv.URL) {
		t.Fatalf("the first frame does not say it waits for foreman:\n%s", shown)
	}
}
