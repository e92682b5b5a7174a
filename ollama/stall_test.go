package ollama_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

const stallChat = `{"model":"tiny-a","messages":[{"role":"user","content":"x"}]}`

// wantStall checks err is a *StallError of the given phase and limit.
func wantStall(t *testing.T, err error, firstByte bool, after time.Duration) {
	t.Helper()
	var se *ollama.StallError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v (%T), want a *StallError", err, err)
	}
	if se.FirstByte != firstByte || se.After != after {
		t.Fatalf("stall %+v, want FirstByte %v after %s", se, firstByte, after)
	}
	var ce *ollama.ConnectionError
	if errors.As(err, &ce) {
		t.Fatal("a stall must not also be a ConnectionError")
	}
}

// waitCanceled waits until the fake saw its only call end with the client gone.
func waitCanceled(t *testing.T, fake *ollamatest.Server) {
	t.Helper()
	err := fake.WaitFor(testCtx(t), func(calls []ollamatest.Call) bool {
		return len(calls) == 1 && calls[0].Finished && calls[0].Canceled
	})
	if err != nil {
		t.Fatalf("the stalled request was not aborted: %+v", fake.Calls())
	}
}

func TestStreamFirstByteTimeout(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	c := newClient(t, fake.URL)
	fake.FailNext(1, ollamatest.Hang)
	_, err := c.Stream(testCtx(t), "/api/chat", []byte(stallChat), func([]byte) error { return nil },
		ollama.FirstByteTimeout(20*time.Millisecond), ollama.IdleTimeout(time.Hour))
	wantStall(t, err, true, 20*time.Millisecond)
	if got := err.Error(); got != "target stalled: no response for 20ms" {
		t.Errorf("message %q", got)
	}
	waitCanceled(t, fake)
}

// Headers alone are not the first byte: a target that sends its status and then nothing
// is still within the first-byte limit, not the (shorter) idle one.
func TestStreamHeadersWithoutBodyIsFirstByteStall(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		_ = http.NewResponseController(w).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL)
	_, err := c.Stream(testCtx(t), "/api/chat", []byte(stallChat), func([]byte) error { return nil },
		ollama.FirstByteTimeout(30*time.Millisecond), ollama.IdleTimeout(time.Millisecond))
	wantStall(t, err, true, 30*time.Millisecond)
}

// The idle limit runs on the watchdog's clock, moved only once the second frame is in:
// on the wall clock, a gap of the limit between the fake's first two frames (a loaded
// machine) ended the call after one.
func TestStreamIdleTimeout(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	c := newClient(t, fake.URL)
	fake.FailNext(1, ollamatest.StallMidStream)
	clk := ollama.NewFakeClock()
	var frames int
	second := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		_, err := c.Stream(testCtx(t), "/api/chat", []byte(stallChat), func([]byte) error {
			if frames++; frames == 2 {
				close(second)
			}
			return nil
		}, ollama.FirstByteTimeout(time.Hour), ollama.IdleTimeout(500*time.Millisecond), ollama.WithClock(clk))
		errc <- err
	}()
	var err error
	select {
	case <-second:
	case err = <-errc:
		t.Fatalf("the call ended before its second frame: %v", err)
	}
	// The limit starts over as the second frame's callback returns: the clock moves on by
	// the limit until the call ends, so the limit runs out once after that.
	ctx := testCtx(t)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for waiting := true; waiting; {
		select {
		case err = <-errc:
			waiting = false
		case <-tick.C:
			clk.Advance(500 * time.Millisecond)
		case <-ctx.Done():
			t.Fatal("the stalled call never ended")
		}
	}
	wantStall(t, err, false, 500*time.Millisecond)
	if got := err.Error(); got != "target stalled: no data for 500ms" {
		t.Errorf("message %q", got)
	}
	if frames != 2 {
		t.Errorf("%d frames before the stall, want 2", frames)
	}
	waitCanceled(t, fake)
}

// A non-streamed body that stops half-way is an idle stall too.
func TestStreamIdleTimeoutNonStreamed(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	c := newClient(t, fake.URL)
	fake.FailNext(1, ollamatest.StallMidStream)
	_, err := c.Stream(testCtx(t), "/api/chat", []byte(`{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"x"}]}`),
		func([]byte) error { return nil }, ollama.IdleTimeout(500*time.Millisecond))
	wantStall(t, err, false, 500*time.Millisecond)
}

// The idle limit measures the target's silence: a callback slower than the limit (a slow
// relay) does not count against the target. The target here sends each line only after
// the callback of the previous one returned, so without that rule the limit would run out
// during every callback.
func TestStreamIdleTimeoutIgnoresCallbackTime(t *testing.T) {
	t.Parallel()
	next := make(chan struct{}, 3)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		for i := range 3 {
			_, _ = w.Write([]byte(`{"done":` + map[bool]string{true: "true", false: "false"}[i == 2] + "}\n"))
			_ = http.NewResponseController(w).Flush()
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL)
	clk := ollama.NewFakeClock()
	var frames int
	_, err := c.Stream(testCtx(t), "/api/chat", []byte(stallChat), func([]byte) error {
		frames++
		// A slow consumer: the callback outlasts the idle limit four times over on the
		// watchdog's clock, whose timers would fire now were the limit counting.
		clk.Advance(200 * time.Millisecond)
		next <- struct{}{}
		return nil
	}, ollama.FirstByteTimeout(time.Minute), ollama.IdleTimeout(50*time.Millisecond), ollama.WithClock(clk))
	if err != nil {
		t.Fatalf("err = %v after %d frames", err, frames)
	}
	if frames != 3 {
		t.Errorf("%d frames, want 3", frames)
	}
}

// Without limits a stall is waited out until the caller's context ends (the old default).
func TestStreamNoLimitsWaits(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	c := newClient(t, fake.URL)
	fake.FailNext(1, ollamatest.Hang)
	errc := make(chan error, 1)
	ctx, cancel := context.WithCancel(testCtx(t))
	go func() {
		_, err := c.Stream(ctx, "/api/chat", []byte(stallChat), func([]byte) error { return nil })
		errc <- err
	}()
	if err := fake.WaitStarted(testCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

// foreman frozen (SIGSTOP, a suspended VM) past a limit, the target not: at the thaw the
// limit's timer fires late by far while what the target sent meanwhile waits unread. It
// is read, and the call goes on; a target still silent a moment after the thaw stalled.
func TestStreamLimitAfterAFreezeWaitsForWhatCameMeanwhile(t *testing.T) {
	t.Parallel()
	for _, sends := range []bool{true, false} {
		arrived, send := make(chan struct{}), make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body) // else the server does not see a client gone
			close(arrived)
			select {
			case <-send:
			case <-r.Context().Done():
				return
			}
			w.Header().Set("Content-Type", "application/x-ndjson")
			_, _ = w.Write([]byte("{\"done\":false}\n{\"done\":true}\n"))
		}))
		t.Cleanup(srv.Close)
		c := newClient(t, srv.URL)
		clk := ollama.NewFakeClock()
		frames := make(chan int, 1)
		errc := make(chan error, 1)
		go func() {
			n := 0
			_, err := c.Stream(testCtx(t), "/api/chat", []byte(stallChat), func([]byte) error { n++; return nil },
				ollama.FirstByteTimeout(time.Minute), ollama.IdleTimeout(time.Minute), ollama.WithClock(clk))
			frames <- n
			errc <- err
		}()
		<-arrived
		clk.Advance(time.Hour) // the freeze: the first-byte timer fires 59 minutes late
		if !sends {
			clk.Advance(ollama.ThawGrace)
			wantStall(t, <-errc, true, time.Minute)
			continue
		}
		close(send)
		if n := <-frames; n != 2 {
			t.Errorf("%d frames, want 2", n)
		}
		if err := <-errc; err != nil {
			t.Fatalf("err = %v, want the answer sent during the freeze read", err)
		}
	}
}

// A target that is never silent yet never answers (a slowloris: a byte now and then of a
// line that never ends, or blank lines a client skips) stalls as a silent one does: the
// limits count lines or events a client reads, not bytes. From the start of the answer
// the first-byte limit runs out on it, once a line came the idle limit. Counted by bytes,
// a byte a second held the call (and the worker) for the 64 MiB a frame may reach: two
// years.
func TestStreamDripIsAStall(t *testing.T) {
	t.Parallel()
	for name, unit := range map[string]string{"a line without end": "a", "blank lines": "\n", "sse comments": ": ping\n\n"} {
		for _, afterData := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, after a line with data %v", name, afterData), func(t *testing.T) {
				t.Parallel()
				sse := unit[0] == ':'
				path := "/api/chat"
				if sse {
					path = "/v1/chat/completions"
				}
				gone := make(chan struct{})
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					defer close(gone)
					w.Header().Set("Content-Type", ollama.ContentTypeNDJSON)
					first := "{\"message\":{\"content\":\"x\"}}\n"
					if sse {
						w.Header().Set("Content-Type", "text/event-stream")
						first = "data: {\"x\":1}\n\n"
					}
					w.WriteHeader(http.StatusOK)
					if afterData {
						_, _ = io.WriteString(w, first)
					}
					dripUntilGone(w, r, unit)
				}))
				t.Cleanup(srv.Close)
				read := &readCounter{rt: &http.Transport{}}
				c, err := ollama.NewClient(ollama.ClientConfig{BaseURL: srv.URL, HTTPClient: &http.Client{Transport: read}})
				if err != nil {
					t.Fatal(err)
				}
				clk := ollama.NewFakeClock()
				limits := []ollama.StreamOption{ollama.FirstByteTimeout(500 * time.Millisecond), ollama.IdleTimeout(time.Hour), ollama.WithClock(clk)}
				if afterData {
					limits = []ollama.StreamOption{ollama.FirstByteTimeout(time.Hour), ollama.IdleTimeout(500 * time.Millisecond), ollama.WithClock(clk)}
				}
				started := make(chan struct{})
				var once sync.Once
				errc := make(chan error, 1)
				go func() {
					_, err := c.Stream(testCtx(t), path, []byte(stallChat), func([]byte) error { once.Do(func() { close(started) }); return nil }, limits...)
					errc <- err
				}()
				if afterData {
					<-started // the line with data is in: the idle limit runs
				}
				// The drip reaches the call before the clock moves: two more reads that
				// brought bytes, so the first one's are counted (a loaded machine may
				// otherwise run the limit out before the response, or the drip, came in).
				base := read.n.Load()
				poll, deadline := time.NewTicker(time.Millisecond), time.After(30*time.Second)
				for read.n.Load() < base+2 {
					select {
					case <-poll.C:
					case <-deadline:
						t.Fatal("the drip did not reach the call")
					}
				}
				poll.Stop()
				// The clock moves half the limit at a time while the drip goes on: a limit
				// that every byte started over never ran out.
				err = advanceUntilEnded(t, clk, 250*time.Millisecond, errc, "the dripping call")
				wantStall(t, err, !afterData, 500*time.Millisecond)
				if got := err.Error(); got != "target stalled: no line or event with data for 500ms, only a trickle of bytes" {
					t.Errorf("message %q", got)
				}
				<-gone // the call was aborted
			})
		}
	}
}

// Keep-alive comments (or blank lines) before a stream's first event with data are no
// answer yet: the model may still be loading behind a proxy that sends them, which the
// first-byte limit (a cold load's) bounds, not the shorter idle one. A target that drips
// them for longer than the first-byte limit is a stall of that limit, the trickle named.
// Before, the first byte of a comment ended the first-byte limit, and the idle limit,
// which bytes no longer start over (ADR-0130), cut a 2-minute load behind such a proxy.
func TestStreamKeepAlivesBeforeTheFirstEventAreTheFirstByteLimits(t *testing.T) {
	t.Parallel()
	for _, drip := range []bool{false, true} {
		release := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, ": ping\n\n\n")
			_ = http.NewResponseController(w).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
			_, _ = io.WriteString(w, "data: {\"x\":1}\n\ndata: [DONE]\n\n")
		}))
		t.Cleanup(srv.Close)
		c := newClient(t, srv.URL)
		clk := ollama.NewFakeClock()
		var frames [][]byte
		kept := make(chan struct{})
		errc := make(chan error, 1)
		go func() {
			_, err := c.Stream(testCtx(t), "/v1/chat/completions", []byte(stallChat), func(f []byte) error {
				if frames = append(frames, f); len(frames) == 2 { // the comment, the blank line
					close(kept)
				}
				return nil
			}, ollama.FirstByteTimeout(5*time.Minute), ollama.IdleTimeout(time.Minute), ollama.WithClock(clk))
			errc <- err
		}()
		select {
		case <-kept:
		case err := <-errc:
			t.Fatalf("the call ended before its keep-alives were read: %v", err)
		}
		// A long load, within the first-byte limit: the clock moves 10 s at a time (the
		// first step may meet the blank line's callback, the later ones find its limit).
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for moved := time.Duration(0); moved < 5*time.Minute-10*time.Second; moved += 10 * time.Second {
			select {
			case err := <-errc:
				t.Fatalf("drip %v: the call ended %s into a load behind keep-alives: %v", drip, moved, err)
			case <-tick.C:
				clk.Advance(10 * time.Second)
			}
		}
		if !drip {
			close(release)
			if err := <-errc; err != nil || len(frames) != 4 {
				t.Fatalf("a load of 5 minutes behind keep-alives: %v after %q, want the answer", err, frames)
			}
			continue
		}
		var err error
		for ticks := 0; err == nil; ticks++ {
			select {
			case err = <-errc:
			case <-tick.C:
				if ticks == 100 {
					t.Fatal("the dripping call runs on past its first-byte limit")
				}
				clk.Advance(10 * time.Second)
			}
		}
		wantStall(t, err, true, 5*time.Minute)
		if got := err.Error(); got != "target stalled: no line or event with data for 5m0s, only a trickle of bytes" {
			t.Errorf("message %q", got)
		}
	}
}

// advanceUntilEnded moves clk on by step every 10 ms until the call reports its end on
// errc, and returns that end; it fails the test once the clock moved 100 steps (50 limits
// of twice the step) with the call, named by what, still running.
func advanceUntilEnded(t *testing.T, clk *ollama.FakeClock, step time.Duration, errc <-chan error, what string) error {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for ticks := 0; ; ticks++ {
		select {
		case err := <-errc:
			return err
		case <-tick.C:
			if ticks == 100 {
				t.Fatalf("%s still runs after 50 limits", what)
			}
			clk.Advance(step)
		}
	}
}

// dripUntilGone writes unit to w every millisecond, flushed, until the client leaves: a
// target that is never silent and never done.
func dripUntilGone(w http.ResponseWriter, r *http.Request, unit string) {
	for {
		_, _ = io.WriteString(w, unit)
		if http.NewResponseController(w).Flush() != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(time.Millisecond):
		}
	}
}
