package ollama

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// MaxFrameSize bounds one NDJSON line or SSE event. Ollama lines carrying
// images or long contexts reach several MiB.
const MaxFrameSize = 64 << 20

// ErrFrameTooLarge is returned (wrapped, and not as a *ConnectionError: a
// retry would fail the same way) when the target sends a frame larger than
// MaxFrameSize.
var ErrFrameTooLarge = errors.New("ollama: stream frame exceeds MaxFrameSize")

// StreamOption adjusts one Stream call.
type StreamOption func(*streamOptions)

type streamOptions struct {
	onResponse func(contentType string) error
	firstByte  time.Duration
	idle       time.Duration
	clock      clock // the watchdog's; tests may replace it (export_test.go)
}

// clock is the time the stall watchdog reads and the timers it sets.
type clock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) stopTimer
}

// stopTimer is what the watchdog does with a timer (*time.Timer has both).
type stopTimer interface {
	Stop() bool
	Reset(d time.Duration) bool
}

type wallClock struct{}

func (wallClock) Now() time.Time                                { return time.Now() }
func (wallClock) AfterFunc(d time.Duration, f func()) stopTimer { return time.AfterFunc(d, f) }

// OnResponse registers fn to be called once with the target's Content-Type after a 2xx
// status arrives and before the first frame, so a relay can send headers before the
// first token instead of holding it back.
func OnResponse(fn func(contentType string) error) StreamOption {
	return func(o *streamOptions) { o.onResponse = fn }
}

// FirstByteTimeout aborts the call with a *StallError when the first byte of the response
// body has not arrived d after the request was sent; of a streamed answer (NDJSON, SSE),
// its first line or event with data (Holds): blank lines or keep-alive comments a proxy
// sends while the model loads are no answer yet. Ollama sends its headers with its first
// chunk, once the model is loaded and the first token generated (for "stream":false, once
// the whole answer is ready), so d must cover a cold load. 0 means no limit.
func FirstByteTimeout(d time.Duration) StreamOption {
	return func(o *streamOptions) { o.firstByte = d }
}

// IdleTimeout aborts the call with a *StallError when, once the body has started, it makes
// no progress for d: of a streamed answer (NDJSON, SSE), no line or event with data
// (Holds); of an answer not streamed, neither its end nor AnswerStep more of its bytes. A
// target that drips a byte now and then (of a line that never ends, of a JSON answer that
// never ends), or blank lines, or keep-alive comments, is never silent, yet sends
// nothing. Time spent in the frame callback does not count: it measures the target's
// progress, not the caller's. An error status's body is read whole: it must end within d
// of its status. 0 means no limit.
func IdleTimeout(d time.Duration) StreamOption {
	return func(o *streamOptions) { o.idle = d }
}

// Stream implements Client.
func (c *HTTPClient) Stream(ctx context.Context, path string, body []byte, fn func(frame []byte) error, opts ...StreamOption) (string, error) {
	var so streamOptions
	for _, o := range opts {
		o(&so)
	}
	// A private context lets an error from fn, or a stall, tear the connection down at once.
	ctx2, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := c.newRequest(ctx2, http.MethodPost, path, nil, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	if so.clock == nil {
		so.clock = wallClock{}
	}
	wd := newWatchdog(so.clock, so.firstByte, so.idle, &StallError{Op: "POST " + path, URL: redacted(req.URL)}, cancel)
	defer wd.stop()
	resp, err := c.hc.Do(req)
	if err != nil {
		if se := c.stalled(ctx2); se != nil {
			return "", se
		}
		return "", c.transportError(ctx, "POST "+path, req, err)
	}
	defer resp.Body.Close()
	ct := resp.Header.Get("Content-Type")
	wd.frames(FramingOf(ct).Streamed())
	resp.Body = wd.watch(resp.Body)
	fn = wd.hold(fn, func(frame []byte) bool { return Holds(ct, frame) })
	if resp.StatusCode/100 != 2 {
		// An error body is read whole: its bytes are no progress, and the idle limit
		// runs from its status to its end.
		wd.whole(resp.StatusCode)
		he := readHTTPError(resp)
		if se := c.stalled(ctx2); se != nil {
			return ct, se
		}
		return ct, he
	}
	if so.onResponse != nil {
		if err := so.onResponse(ct); err != nil {
			return ct, err
		}
	}
	var readErr, fnErr error
	switch FramingOf(ct) {
	case NDJSON, SSE:
		readErr, fnErr = splitFrames(resp.Body, FramingOf(ct), fn)
	default:
		var all []byte
		all, readErr = io.ReadAll(io.LimitReader(resp.Body, MaxFrameSize+1))
		if len(all) > MaxFrameSize {
			readErr = fmt.Errorf("%w: a non-streamed answer of more than %d bytes", ErrFrameTooLarge, MaxFrameSize)
		}
		if readErr == nil {
			fnErr = fn(all)
		}
	}
	if readErr != nil {
		if se := c.stalled(ctx2); se != nil {
			return ct, se
		}
	}
	switch {
	case fnErr != nil:
		return ct, fnErr
	case errors.Is(readErr, ErrFrameTooLarge):
		return ct, fmt.Errorf("ollama: POST %s: %w", path, readErr)
	case readErr != nil:
		return ct, c.transportError(ctx, "read stream "+path, req, readErr)
	}
	return ct, nil
}

// splitFrames reads r and hands fn each frame of framing f, bytes unchanged: for NDJSON
// a line, ended by LF (a CR before it stays in the line, white space to JSON, as Ollama's
// clients read it); for SSE an event, ended by an empty line, its lines ended by LF, CRLF
// or CR, mixed as they come, as an event stream's client reads them (the WHATWG rules).
// The LF of a CRLF that ends an event goes with its event when it has come with its CR,
// else it begins the next frame: no frame waits for a byte that may never come. A final
// frame not ended before EOF is still delivered as sent. A UTF-8 byte order mark before
// the stream's first byte is dropped (byteOrderMark).
func splitFrames(r io.Reader, f Framing, fn func([]byte) error) (readErr, fnErr error) {
	br := bufio.NewReaderSize(r, 64<<10)
	if b, err := br.Peek(1); err == nil && b[0] == byteOrderMark[0] {
		// Only a stream that begins as a BOM does waits for its next bytes: no JSON line
		// nor event line begins so.
		if b, _ := br.Peek(len(byteOrderMark)); bytes.Equal(b, byteOrderMark) {
			_, _ = br.Discard(len(byteOrderMark))
		}
	}
	lineEnd := func(b []byte) int { return bytes.IndexByte(b, '\n') }
	if f == SSE {
		lineEnd = func(b []byte) int { return bytes.IndexAny(b, "\r\n") }
	}
	var frame []byte
	lineLen := 0     // bytes of the line read so far, before its end
	afterCR := false // a CR ended the last line and nothing came after it yet
	for {
		if br.Buffered() == 0 {
			if _, err := br.Peek(1); err != nil {
				if !errors.Is(err, io.EOF) {
					return err, nil
				}
				if len(frame) > 0 {
					return nil, fn(frame)
				}
				return nil, nil
			}
		}
		buf, _ := br.Peek(br.Buffered())
		if afterCR && buf[0] == '\n' {
			// The LF of a CRLF whose CR came alone: it ends no line of its own.
			frame = append(frame, '\n')
			_, _ = br.Discard(1)
			afterCR = false
			if len(frame) > MaxFrameSize {
				return ErrFrameTooLarge, nil
			}
			continue
		}
		afterCR = false
		i := lineEnd(buf)
		if i < 0 {
			frame = append(frame, buf...)
			lineLen += len(buf)
			_, _ = br.Discard(len(buf))
			if len(frame) > MaxFrameSize {
				return ErrFrameTooLarge, nil
			}
			continue
		}
		cr := buf[i] == '\r'
		frame = append(frame, buf[:i+1]...)
		_, _ = br.Discard(i + 1)
		empty := lineLen+i == 0
		lineLen = 0
		if cr {
			// Peek only at what came with the CR: a read here would hold the frame back.
			if br.Buffered() == 0 {
				afterCR = true
			} else if next, _ := br.Peek(1); next[0] == '\n' {
				frame = append(frame, '\n')
				_, _ = br.Discard(1)
			}
		}
		if len(frame) > MaxFrameSize {
			return ErrFrameTooLarge, nil
		}
		if f == NDJSON || empty {
			if err := fn(frame); err != nil {
				return nil, err
			}
			frame = nil
		}
	}
}

// byteOrderMark is UTF-8's byte order mark, which a server or proxy may write before a
// stream's first byte. It is no part of the stream's first frame: an SSE client drops it
// (the event stream rules), and so does ollama-js reading NDJSON (a TextDecoder), where
// Ollama's Go client fails the call on it (its first line is no JSON). Kept, a caller's
// parse of the first frame failed, and the worker's result lost that frame (ADR-0135).
var byteOrderMark = []byte("\xEF\xBB\xBF")

// stalled returns the *StallError that ended ctx, or nil.
func (c *HTTPClient) stalled(ctx context.Context) *StallError {
	var se *StallError
	if !errors.As(context.Cause(ctx), &se) {
		return nil
	}
	c.logger.WarnContext(ctx, "ollama target stalled; request aborted", slog.String("op", se.Op), slog.String("url", se.URL), slog.String("reason", se.Reason()))
	return se
}

// AnswerStep is how much of a 2xx answer that is not streamed (application/json: an
// embedding, a chat a proxy answers in one piece) is progress for the idle limit, short of
// its end: Ollama writes such an answer at once, after its compute, so only the link
// paces it, and a MiB within the idle limit (2m by default: 8.7 kB/s) is met by any link
// that carries a stream's lines (ADR-0130: a line, the last of a generate about a megabyte,
// must come whole within it). Counted by bytes, a target that dripped a byte every idle
// limit less a bit held the call for the MaxFrameSize the answer may reach (ADR-0130,
// amended).
const AnswerStep = 1 << 20

// A limit's timer that fires more than lateFire after it was due shows that this process
// itself did not run for that long (frozen by SIGSTOP, a suspended VM or laptop lid): the
// bytes the target sent meanwhile wait unread, and the limit waits thawGrace more for them
// (at most the limit) before it blames the target.
const (
	lateFire  = time.Second
	thawGrace = time.Second
)

// watchdog aborts a call whose target falls silent: before the first body byte (of a
// stream: its first frame with data) for longer than firstByte, after it for longer than
// idle between steps of progress (of a stream: frames with data; of an answer not
// streamed: AnswerStep of its bytes, or its end) (0 = no limit).
type watchdog struct {
	firstByte, idle time.Duration
	abort           func(error)
	template        StallError
	clock           clock

	mu      sync.Mutex
	timer   stopTimer // nil when no limit applies now
	armed   time.Time // when the running limit started
	started bool      // the first body byte arrived (of a stream: its first frame with data)
	paused  bool      // the caller's callback runs: the target is not waited for
	byFrame bool      // a stream: only a frame with data is progress, its first one the start
	trickle bool      // bytes came since the running limit started, and no such frame (nor AnswerStep)
	pending int       // an answer not streamed: its bytes since the running limit started
	thawed  bool      // the running limit ran out while this process was frozen (fire)
	status  int       // an error status's body is read whole (whole)
}

func newWatchdog(clk clock, firstByte, idle time.Duration, template *StallError, abort func(error)) *watchdog {
	w := &watchdog{firstByte: firstByte, idle: idle, abort: abort, template: *template, clock: clk, armed: clk.Now()}
	if firstByte > 0 {
		// Under mu: the timer may fire (late, on a loaded machine) before it is stored,
		// and its callback reads it.
		w.mu.Lock()
		defer w.mu.Unlock()
		w.timer = clk.AfterFunc(firstByte, w.fire)
	}
	return w
}

// fire aborts the call with the limit that ran out, unless progress raced the timer (the
// limit was re-armed meanwhile and fires again later, or, with no idle limit, stopped
// for good) or the caller's callback runs, or it fired late by far (this process was
// frozen): then the limit runs on for thawGrace.
func (w *watchdog) fire() {
	w.mu.Lock()
	if w.started && w.idle <= 0 {
		// The first-byte timer fired as the first byte came: no limit applies any more, and
		// "no data for 0s" would end a healthy stream.
		w.mu.Unlock()
		return
	}
	se := w.template
	se.FirstByte = !w.started
	se.Trickle = w.trickle
	se.NotStreamed = !w.byFrame
	se.Status = w.status
	se.After = w.idle
	if se.FirstByte {
		se.After = w.firstByte
	}
	now := w.clock.Now()
	live := !w.paused && now.Sub(w.armed) >= se.After
	if grace := min(thawGrace, se.After); live && now.Sub(w.armed.Add(se.After)) > lateFire && w.timer != nil {
		// The timer fired late by far: this process did not run (SIGSTOP, a suspended VM),
		// and what the target sent meanwhile may wait unread. It gets a moment to be read
		// before the silence counts as the target's.
		w.armed = now.Add(grace - se.After)
		w.timer.Reset(grace)
		w.thawed = true
		live = false
	}
	w.mu.Unlock()
	if live {
		w.abort(&se)
	}
}

// frames says whether the answer is a stream, whose progress is its frames with data
// (hold), not its bytes: bytes before the first such frame (keep-alive comments, blank
// lines, while a proxy waits for a model's load) leave the first-byte limit running.
func (w *watchdog) frames(streamed bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.byFrame = streamed
}

// whole says the target answered error status code, whose body is read whole for its
// message: the status is the answer's start, and its body must end within the idle limit
// from it, its bytes no progress. Ollama writes an error's status and body at once; a
// body that drips (a byte now and then, never ending) held the call, each byte starting
// the idle limit over, for the megabyte of it that is read.
func (w *watchdog) whole(code int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.byFrame, w.started, w.status = true, true, code
	w.rearmLocked()
}

// progress records n body bytes: of an answer not streamed, the first one ends the
// first-byte limit and starts the idle limit, and each AnswerStep of them after it starts
// that limit over (its end does too: hold), fewer are a trickle, but for the first read
// after a thaw (thawed): the target sent while this process was frozen, and the next MiB
// has the whole limit, not thawGrace; a stream's are only a trickle until they make a
// frame with data (hold).
func (w *watchdog) progress(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.byFrame:
		w.trickle = true
	case !w.started:
		w.started = true
		w.rearmLocked()
		w.pending = n
	default:
		if w.pending += n; w.pending >= AnswerStep || w.thawed {
			w.rearmLocked()
		} else {
			w.trickle = true
		}
	}
}

// rearmLocked restarts the idle limit, or stops the first-byte one when there is none.
func (w *watchdog) rearmLocked() {
	w.armed = w.clock.Now()
	w.trickle = false
	w.pending = 0
	w.thawed = false
	switch {
	case w.idle <= 0:
		if w.timer != nil {
			w.timer.Stop()
		}
	case w.timer == nil:
		w.timer = w.clock.AfterFunc(w.idle, w.fire)
	default:
		w.timer.Reset(w.idle)
	}
}

func (w *watchdog) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.timer != nil {
		w.timer.Stop()
	}
}

// watch returns body with every read reported to the watchdog.
func (w *watchdog) watch(body io.ReadCloser) io.ReadCloser {
	if w.firstByte <= 0 && w.idle <= 0 {
		return body
	}
	return &watchedBody{ReadCloser: body, w: w}
}

// hold returns fn with the watchdog held while it runs. A frame that counts is progress
// (a stream's first one ends the first-byte limit): the idle limit starts over after it;
// after one that does not, the running limit runs on from where it was, the callback's
// time left out.
func (w *watchdog) hold(fn func([]byte) error, counts func([]byte) bool) func([]byte) error {
	if w.idle <= 0 && w.firstByte <= 0 {
		return fn
	}
	return func(frame []byte) error {
		w.mu.Lock()
		w.paused = true
		since := w.clock.Now()
		if w.timer != nil {
			w.timer.Stop()
		}
		w.mu.Unlock()
		err := fn(frame)
		w.mu.Lock()
		w.paused = false
		limit := w.idle
		if !w.started {
			limit = w.firstByte
		}
		switch {
		case counts(frame):
			w.started = true
			w.rearmLocked()
		case limit > 0 && w.timer != nil:
			now := w.clock.Now()
			w.armed = w.armed.Add(now.Sub(since))
			w.timer.Reset(max(limit-now.Sub(w.armed), 0))
		}
		w.mu.Unlock()
		return err
	}
}

type watchedBody struct {
	io.ReadCloser
	w *watchdog
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.w.progress(n)
	}
	return n, err
}
