package ollama

import (
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
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
	w.progress(1)
	w.fire() // the timer's callback, already running when progress stopped it
	if aborted != nil {
		t.Fatalf("a stream whose first byte came in time was aborted: %v", aborted)
	}
}

// watched is a watchdog on a fake clock with the given limits, and the abort it made.
func watched(t *testing.T, firstByte, idle time.Duration) (*watchdog, *FakeClock, *error) {
	t.Helper()
	clk := NewFakeClock()
	aborted := new(error)
	w := newWatchdog(clk, firstByte, idle, &StallError{Op: "POST /api/chat"}, func(err error) { *aborted = err })
	t.Cleanup(w.stop)
	return w, clk, aborted
}

// The idle limit runs out after exactly its length of silence, and not before.
func TestWatchdogIdleLimitRunsOutAtItsLength(t *testing.T) {
	t.Parallel()
	w, clk, aborted := watched(t, time.Minute, 50*time.Millisecond)
	w.progress(1)
	clk.Advance(50*time.Millisecond - time.Nanosecond)
	if *aborted != nil {
		t.Fatalf("aborted before the limit: %v", *aborted)
	}
	clk.Advance(time.Nanosecond)
	if *aborted == nil {
		t.Fatal("not aborted after 50ms of silence")
	}
}

// A timer callback that comes late ends nothing: not one that raced progress (the limit
// started over since), nor one that runs while the caller's callback does.
func TestWatchdogLateFireEndsNothing(t *testing.T) {
	t.Parallel()
	w, clk, aborted := watched(t, time.Minute, 50*time.Millisecond)
	w.progress(1)
	clk.Advance(40 * time.Millisecond)
	w.progress(AnswerStep)
	clk.Advance(20 * time.Millisecond)
	w.fire() // the first arming's callback, already running when progress re-armed it
	if *aborted != nil {
		t.Fatalf("a fire that raced progress aborted: %v", *aborted)
	}
	held := w.hold(func([]byte) error {
		clk.Advance(time.Second)
		w.fire() // a callback already running when hold stopped the timer
		return nil
	}, func([]byte) bool { return true })
	if err := held(nil); err != nil || *aborted != nil {
		t.Fatalf("a fire during the caller's callback: %v, aborted %v", err, *aborted)
	}
}

// With a first-byte limit and no idle one, a body that has started is not cut off by
// the first-byte limit, however long it runs.
func TestWatchdogFirstByteLimitAloneEndsWithTheFirstByte(t *testing.T) {
	t.Parallel()
	w, clk, aborted := watched(t, 10*time.Second, 0)
	body := w.watch(io.NopCloser(strings.NewReader("x")))
	if _, err := body.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour)
	if *aborted != nil {
		t.Fatalf("a started body was aborted: %v", *aborted)
	}
}

// A limit whose timer fires late by far (foreman frozen past it) waits on for thawGrace,
// no limit shorter than the grace waiting longer than itself, and then ends the call as
// that limit's stall: what the target sent meanwhile has had its moment to be read.
func TestWatchdogLateByFarWaitsTheGraceThenEnds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name            string
		firstByte, idle time.Duration
		started         bool
		grace           time.Duration
	}{
		{"first byte", time.Minute, time.Minute, false, thawGrace},
		{"idle", time.Minute, time.Minute, true, thawGrace},
		{"idle shorter than the grace", time.Minute, thawGrace / 4, true, thawGrace / 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w, clk, aborted := watched(t, tc.firstByte, tc.idle)
			limit := tc.firstByte
			if tc.started {
				w.progress(1)
				limit = tc.idle
			}
			clk.Advance(limit + time.Hour) // the freeze: the timer fires an hour late
			if *aborted != nil {
				t.Fatalf("aborted as the freeze ended: %v", *aborted)
			}
			clk.Advance(tc.grace / 2)
			if *aborted != nil {
				t.Fatalf("aborted within the grace of %v: %v", tc.grace, *aborted)
			}
			clk.Advance(tc.grace - tc.grace/2)
			var se *StallError
			if !errors.As(*aborted, &se) || se.FirstByte == tc.started || se.After != limit {
				t.Fatalf("after the grace of %v: %v, want the stall of the %v limit", tc.grace, *aborted, limit)
			}
		})
	}
}

// A timer that fires late, but by no more than lateFire (a busy process, not a frozen
// one), ends the call at once: only a freeze earns the grace.
func TestWatchdogLateByLittleEndsAtOnce(t *testing.T) {
	t.Parallel()
	w, clk, aborted := watched(t, time.Minute, 50*time.Millisecond)
	w.progress(1)
	clk.Advance(50*time.Millisecond + lateFire)
	if *aborted == nil {
		t.Fatalf("a timer %v late did not abort", lateFire)
	}
}

// promptClock's timers fire at once, each on a goroutine of its own, and late by far: a
// wall-clock timer of a process descheduled past its limit (and past lateFire) before
// the arming caller went on.
type promptClock struct {
	fired sync.WaitGroup
	reads atomic.Int64
}

// Now is the start for its first reader (the watchdog arming) and an hour on after.
func (c *promptClock) Now() time.Time {
	if c.reads.Add(1) == 1 {
		return time.Unix(1_700_000_000, 0)
	}
	return time.Unix(1_700_000_000, 0).Add(time.Hour)
}

func (c *promptClock) AfterFunc(_ time.Duration, f func()) stopTimer {
	c.fired.Add(1)
	go func() { defer c.fired.Done(); f() }()
	return noTimer{}
}

type noTimer struct{}

func (noTimer) Stop() bool                 { return false }
func (noTimer) Reset(d time.Duration) bool { return false }

// A first-byte timer that fires, late by far, before newWatchdog has stored it (a loaded
// machine, a short limit) reads the watchdog's timer only after it is stored: the race
// detector finds the store and the callback's read unordered otherwise.
func TestWatchdogTimerFiringAsItIsArmed(t *testing.T) {
	t.Parallel()
	clk := &promptClock{}
	w := newWatchdog(clk, time.Millisecond, time.Millisecond, &StallError{Op: "POST /api/chat"}, func(error) {})
	clk.fired.Wait()
	w.stop()
}

// In a stream a frame without data (a blank line, a comment) is no progress: the idle
// limit runs on over it from where it was, its callback's time left out.
// (A stream's bytes before its first frame with data leave the first-byte limit
// running: TestWatchdogStreamStartsWithAFrameWithData.)
func TestWatchdogFrameWithoutDataLeavesTheLimitRunning(t *testing.T) {
	t.Parallel()
	w, clk, aborted := watched(t, time.Minute, 50*time.Millisecond)
	w.frames(true)
	w.progress(1)
	held := w.hold(func([]byte) error { clk.Advance(time.Second); return nil }, func(f []byte) bool { return len(f) > 0 })
	if err := held([]byte("x")); err != nil || *aborted != nil { // the first frame with data
		t.Fatalf("the first frame: %v, aborted %v", err, *aborted)
	}
	clk.Advance(30 * time.Millisecond)
	w.progress(1) // a blank line's bytes
	if err := held(nil); err != nil || *aborted != nil {
		t.Fatalf("the callback's second counted: %v, aborted %v", err, *aborted)
	}
	clk.Advance(20*time.Millisecond - time.Nanosecond)
	if *aborted != nil {
		t.Fatalf("aborted before the limit: %v", *aborted)
	}
	clk.Advance(time.Nanosecond)
	var se *StallError
	if !errors.As(*aborted, &se) || !se.Trickle || se.FirstByte {
		t.Fatalf("aborted %v, want a trickle's stall 50ms after the last frame with data", *aborted)
	}
	// A frame with data starts the limit over.
	w2, clk2, aborted2 := watched(t, time.Minute, 50*time.Millisecond)
	w2.frames(true)
	w2.progress(1)
	clk2.Advance(40 * time.Millisecond)
	if err := w2.hold(func([]byte) error { return nil }, func([]byte) bool { return true })([]byte("x")); err != nil {
		t.Fatal(err)
	}
	clk2.Advance(40 * time.Millisecond)
	if *aborted2 != nil {
		t.Fatalf("aborted 40ms after a frame with data: %v", *aborted2)
	}
}

// A stream starts with its first frame with data, not its first byte: bytes and frames
// without data before it leave the first-byte limit running (their callbacks' time left
// out), and the first-byte stall then names the trickle; the frame with data ends the
// first-byte limit and starts the idle one.
func TestWatchdogStreamStartsWithAFrameWithData(t *testing.T) {
	t.Parallel()
	w, clk, aborted := watched(t, time.Minute, 50*time.Millisecond)
	w.frames(true)
	counts := func(f []byte) bool { return len(f) > 0 }
	held := w.hold(func([]byte) error { clk.Advance(time.Hour); return nil }, counts)
	w.progress(1) // a keep-alive's bytes
	clk.Advance(time.Second)
	if err := held(nil); err != nil || *aborted != nil {
		t.Fatalf("a keep-alive a second in: %v, aborted %v", err, *aborted)
	}
	clk.Advance(time.Minute - time.Second - time.Nanosecond)
	if *aborted != nil {
		t.Fatalf("aborted within the first-byte limit: %v", *aborted)
	}
	clk.Advance(time.Nanosecond)
	var se *StallError
	if !errors.As(*aborted, &se) || !se.FirstByte || !se.Trickle || se.After != time.Minute {
		t.Fatalf("aborted %v, want a trickle's first-byte stall after 1m", *aborted)
	}

	w2, clk2, aborted2 := watched(t, time.Minute, 50*time.Millisecond)
	w2.frames(true)
	w2.progress(1)
	clk2.Advance(59 * time.Second)
	if err := w2.hold(func([]byte) error { return nil }, counts)([]byte("x")); err != nil {
		t.Fatal(err)
	}
	clk2.Advance(50*time.Millisecond - time.Nanosecond)
	if *aborted2 != nil {
		t.Fatalf("aborted within the idle limit of the first frame: %v", *aborted2)
	}
	clk2.Advance(time.Nanosecond)
	if !errors.As(*aborted2, &se) || se.FirstByte || se.Trickle || se.After != 50*time.Millisecond {
		t.Fatalf("aborted %v, want an idle stall 50ms after the first frame", *aborted2)
	}
}

// An error status's body (whole) is progress only at its end: the idle limit runs from
// the status however many of its bytes come, and the stall names the status. With no
// idle limit, nothing bounds it (the operator turned the limit off).
func TestWatchdogErrorBodyIsReadWhole(t *testing.T) {
	t.Parallel()
	w, clk, aborted := watched(t, time.Hour, 500*time.Millisecond)
	w.frames(false) // an error's JSON: counted by bytes, were it a 2xx answer
	w.whole(502)
	for range 4 {
		clk.Advance(100 * time.Millisecond)
		w.progress(1)
	}
	if *aborted != nil {
		t.Fatalf("aborted before the limit: %v", *aborted)
	}
	clk.Advance(100 * time.Millisecond)
	var se *StallError
	if !errors.As(*aborted, &se) || se.Status != 502 || se.FirstByte || !se.Trickle || se.After != 500*time.Millisecond {
		t.Fatalf("aborted with %v (%+v), want the idle limit's stall of a 502's body", *aborted, se)
	}

	w, clk, aborted = watched(t, time.Hour, 0)
	w.whole(502)
	clk.Advance(2 * time.Hour)
	if *aborted != nil {
		t.Fatalf("no idle limit, yet aborted: %v", *aborted)
	}
}

// An answer not streamed starts with its first byte, which ends the first-byte limit; then
// only AnswerStep of its bytes (or its end, hold) starts the idle limit over: a drip
// stalls at the idle limit from its first byte, naming the trickle, while an answer that
// comes a MiB at a time, each within the limit, runs on however long it takes in all.
func TestWatchdogAnswerNotStreamedProgressesByTheMiB(t *testing.T) {
	t.Parallel()
	w, clk, aborted := watched(t, time.Hour, 500*time.Millisecond)
	w.frames(false)
	clk.Advance(30 * time.Minute) // the compute: the first-byte limit's
	w.progress(100)
	for range 4 {
		clk.Advance(100 * time.Millisecond)
		w.progress(1)
	}
	if *aborted != nil {
		t.Fatalf("aborted before the idle limit: %v", *aborted)
	}
	clk.Advance(100 * time.Millisecond)
	var se *StallError
	if !errors.As(*aborted, &se) || se.FirstByte || !se.Trickle || !se.NotStreamed || se.After != 500*time.Millisecond {
		t.Fatalf("aborted with %v (%+v), want a trickle's idle stall 500ms after the first byte", *aborted, se)
	}

	// A slow link: half a MiB every 200ms, ten MiB in 4s, each MiB within the limit (a
	// call that does not stream has no first-byte limit: NonStreamTimeout bounds it).
	w, clk, aborted = watched(t, 0, 500*time.Millisecond)
	w.frames(false)
	w.progress(1)
	for range 20 {
		clk.Advance(200 * time.Millisecond)
		w.progress(AnswerStep / 2)
	}
	if err := w.hold(func([]byte) error { return nil }, func(f []byte) bool { return true })([]byte("{}")); err != nil || *aborted != nil {
		t.Fatalf("a slow but steady answer: %v, aborted %v", err, *aborted)
	}
	// Silent after its last MiB, short of its end: the idle limit, no trickle.
	w, clk, aborted = watched(t, time.Hour, 500*time.Millisecond)
	w.progress(1)
	w.progress(AnswerStep)
	clk.Advance(500 * time.Millisecond)
	if !errors.As(*aborted, &se) || se.Trickle || se.Error() != "target stalled: no data for 500ms" {
		t.Fatalf("aborted with %v, want a silent answer's idle stall", *aborted)
	}
}

// An answer not streamed whose idle limit ran out while this process was frozen (its
// timer fires late by far) is not held to a MiB within thawGrace: the bytes read in the
// grace show the target sending, and start the limit over, from which the next MiB (or
// the end) has the whole limit, as over any link that carries a MiB per idle limit. Held
// to a MiB in the grace, a healthy answer over a link slower than a MiB a second was cut
// as a trickle once the process thawed.
func TestWatchdogAnswerNotStreamedAfterAThaw(t *testing.T) {
	t.Parallel()
	w, clk, aborted := watched(t, time.Hour, time.Minute)
	w.frames(false)
	w.progress(100)
	clk.Advance(time.Minute + time.Hour) // the freeze: the idle timer fires an hour late
	clk.Advance(thawGrace / 2)
	w.progress(64 << 10) // what waited unread, and what the link brings on
	for range 100 {      // 100 kB/s, the rest of the answer: 600 kB in 59s
		clk.Advance(thawGrace / 2)
		w.progress(6 << 10)
	}
	if *aborted != nil {
		t.Fatalf("a healthy answer cut after the thaw: %v", *aborted)
	}
	if err := w.hold(func([]byte) error { return nil }, func([]byte) bool { return true })([]byte("{}")); err != nil {
		t.Fatal(err)
	}

	// A freeze gives no drip more than the one limit: after it, a trickle stalls again.
	w, clk, aborted = watched(t, time.Hour, time.Minute)
	w.frames(false)
	w.progress(100)
	clk.Advance(time.Minute + time.Hour)
	w.progress(1)
	for range 59 {
		clk.Advance(time.Second)
		w.progress(1)
	}
	if *aborted != nil {
		t.Fatalf("aborted within the limit after the thaw: %v", *aborted)
	}
	clk.Advance(time.Second)
	var se *StallError
	if !errors.As(*aborted, &se) || !se.Trickle || !se.NotStreamed || se.After != time.Minute {
		t.Fatalf("a drip after the thaw: %v, want a trickle's stall a limit after it", *aborted)
	}
}
