package ollama_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// A non-2xx answer whose error body drips (a byte now and then, never ending) holds the
// call no longer than the idle limit from its status: the body is read whole or not at
// all, and its bytes are no progress until it has ended. Before, readHTTPError read it
// bounded in size (1 MiB) only, and each byte started the idle limit over: a byte a
// second held the attempt, and the worker, for twelve days.
func TestStreamDrippedErrorBodyIsAStall(t *testing.T) {
	t.Parallel()
	for _, streams := range []bool{true, false} {
		gone := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer close(gone)
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, `{"error":"`)
			dripUntilGone(w, r, "x")
		}))
		t.Cleanup(srv.Close)
		c := newClient(t, srv.URL)
		clk := ollama.NewFakeClock()
		firstByte := time.Hour // a streamed call's; one that does not stream has none
		if !streams {
			firstByte = 0
		}
		errc := make(chan error, 1)
		go func() {
			_, err := c.Stream(testCtx(t), "/api/chat", []byte(stallChat), func([]byte) error { return nil },
				ollama.FirstByteTimeout(firstByte), ollama.IdleTimeout(500*time.Millisecond), ollama.WithClock(clk))
			errc <- err
		}()
		err := advanceUntilEnded(t, clk, 250*time.Millisecond, errc, fmt.Sprintf("streams %v: the call reading its dripping error body", streams))
		wantStall(t, err, false, 500*time.Millisecond)
		var se *ollama.StallError
		if errors.As(err, &se); se.Status != http.StatusInternalServerError {
			t.Errorf("stall %+v, want the status it answered", se)
		}
		if got := err.Error(); got != "target stalled: status 500 answered, its body not whole after 500ms" {
			t.Errorf("message %q", got)
		}
		<-gone // the call was aborted
	}
}

// NDJSON whose lines end with a CR alone (ADR-0135) is one line that never ends while the
// target writes: no line with data comes, so the first-byte limit runs out on it, or once
// an LF-ended line came the idle limit, as for any drip (ADR-0130). It never holds the call
// past them.
func TestStreamCROnlyNDJSONStallsAtTheLimit(t *testing.T) {
	t.Parallel()
	for _, afterLine := range []bool{false, true} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", ollama.ContentTypeNDJSON)
			w.WriteHeader(http.StatusOK)
			if afterLine {
				_, _ = io.WriteString(w, "{\"message\":{\"content\":\"a\"},\"done\":false}\n")
			}
			dripUntilGone(w, r, "{\"message\":{\"content\":\"x\"},\"done\":false}\r")
		}))
		t.Cleanup(srv.Close)
		c := newClient(t, srv.URL)
		clk := ollama.NewFakeClock()
		started := make(chan struct{}, 1)
		errc := make(chan error, 1)
		go func() {
			_, err := c.Stream(testCtx(t), "/api/chat", []byte(stallChat), func([]byte) error {
				started <- struct{}{}
				return nil
			}, ollama.FirstByteTimeout(500*time.Millisecond), ollama.IdleTimeout(500*time.Millisecond), ollama.WithClock(clk))
			errc <- err
		}()
		if afterLine {
			<-started
		}
		err := advanceUntilEnded(t, clk, 250*time.Millisecond, errc, fmt.Sprintf("after a line %v: the CR-only stream", afterLine))
		wantStall(t, err, !afterLine, 500*time.Millisecond)
		if len(started) != 0 {
			t.Errorf("after a line %v: a CR-ended line was handed on as a frame", afterLine)
		}
	}
}

// A stream that begins with a BOM's first byte (or two) and then falls silent is a stall
// at the first-byte limit: splitFrames' look at the next bytes waits on the watched body,
// which the limit ends, never past it.
func TestStreamBOMHeadThenSilenceStalls(t *testing.T) {
	t.Parallel()
	for _, head := range []string{"\xEF", "\xEF\xBB"} {
		for _, ct := range []string{ollama.ContentTypeNDJSON, "text/event-stream"} {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", ct)
				w.WriteHeader(http.StatusOK)
				_, _ = io.WriteString(w, head)
				_ = http.NewResponseController(w).Flush()
				<-r.Context().Done()
			}))
			t.Cleanup(srv.Close)
			c := newClient(t, srv.URL)
			clk := ollama.NewFakeClock()
			errc := make(chan error, 1)
			go func() {
				_, err := c.Stream(testCtx(t), "/api/chat", []byte(stallChat), func([]byte) error { return nil },
					ollama.FirstByteTimeout(500*time.Millisecond), ollama.IdleTimeout(500*time.Millisecond), ollama.WithClock(clk))
				errc <- err
			}()
			err := advanceUntilEnded(t, clk, 250*time.Millisecond, errc, fmt.Sprintf("%q (%s): the stream", head, ct))
			wantStall(t, err, true, 500*time.Millisecond)
		}
	}
}
