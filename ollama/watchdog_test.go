package ollama

import (
	"testing"
	"time"
)

// A first-byte timer that fires as the first byte arrives, with no idle limit, ends
// nothing: the body has started, and no limit applies to it.
func TestWatchdogFirstByteRaceWithoutIdleLimit(t *testing.T) {
	t.Parallel()
	clk := NewFakeClock()
	var aborted error
	w := newWatchdog(clk, 10*time.Second, 0, &StallError{Op: "POST /api/chat"}, func(err error) { aborted = err })
	defer w.stop()
	clk.Advance(10*time.Second - time.Nanosecond)
	w.progress()
	w.fire() // the timer's callback, already running when progress stopped it
	if aborted != nil {
		t.Fatalf("a stream whose first byte came in time was aborted: %v", aborted)
	}
}
