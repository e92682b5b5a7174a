package ollamatest

import (
	"testing"
	"time"
)

// TestPacerKeepsItsOwnClock: a token's write does not delay the next token, a reply held
// back paces on from where it was let go, without a burst.
func TestPacerKeepsItsOwnClock(t *testing.T) {
	ms := func(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }
	t0 := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	p := pacer{every: ms(1), due: t0}
	steps := []struct {
		at   float64 // ms after t0 when the token asks
		wait float64 // how long it is told to wait (ms)
	}{
		{0, 1},      // the first token, one delay after the start
		{1.3, 0.7},  // the one before took 0.3 ms to write: due at 2 ms all the same
		{2.9, 0.1},  // due at 3 ms
		{3.5, 0.5},  // due at 4 ms
		{5.4, 0},    // due at 5 ms, asked late (by less than a token): at once
		{5.5, 0.5},  // due at 6 ms: the clock did not move
		{20, 0},     // due at 7 ms, held back 13 ms: at once,
		{20.2, 0.8}, // then one delay after it, not the missed tokens at once
		{21.1, 0.9},
	}
	for i, s := range steps {
		if got := p.wait(t0.Add(ms(s.at))); got != ms(s.wait) {
			t.Fatalf("token %d asking at %v ms waits %v, want %v", i, s.at, got, ms(s.wait))
		}
	}
}

// TestPacerWithoutDelay: no delay, no wait.
func TestPacerWithoutDelay(t *testing.T) {
	now := time.Now()
	p := pacer{due: now}
	for i := range 3 {
		if got := p.wait(now.Add(time.Duration(i) * time.Millisecond)); got != 0 {
			t.Fatalf("token %d waits %v without a delay", i, got)
		}
	}
}
