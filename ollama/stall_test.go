package ollama_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
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
// idle limit counts from the last line or event a client reads, not from the last byte.
// Counted by bytes, a byte a second held the call (and the worker) for the 64 MiB a frame
// may reach: two years.
func TestStreamDripIsAStall(t *testing.T) {
	t.Parallel()
	for name, unit := range map[string]string{"a line without end": "a", "blank lines": "\n", "sse comments": ": ping\n\n"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fake := ollamatest.New(t)
			c := newClient(t, fake.URL)
			fake.FailNext(1, ollamatest.Drip(time.Millisecond, unit))
			path := "/api/chat"
			if unit[0] == ':' {
				path = "/v1/chat/completions"
			}
			clk := ollama.NewFakeClock()
			errc := make(chan error, 1)
			go func() {
				_, err := c.Stream(testCtx(t), path, []byte(stallChat), func([]byte) error { return nil },
					ollama.FirstByteTimeout(time.Hour), ollama.IdleTimeout(500*time.Millisecond), ollama.WithClock(clk))
				errc <- err
			}()
			if err := fake.WaitStarted(testCtx(t), "tiny-a", 1); err != nil {
				t.Fatal(err)
			}
			// The clock moves half the limit at a time while the drip goes on: a limit
			// that every byte started over never ran out.
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for ticks := 0; ; ticks++ {
				select {
				case err := <-errc:
					wantStall(t, err, false, 500*time.Millisecond)
					if got := err.Error(); got != "target stalled: no line or event with data for 500ms, only a trickle of bytes" {
						t.Errorf("message %q", got)
					}
					waitCanceled(t, fake)
					return
				case <-tick.C:
					if ticks == 100 {
						t.Fatal("the dripping call still runs after 50 idle limits")
					}
					clk.Advance(250 * time.Millisecond)
				}
			}
		})
	}
}
