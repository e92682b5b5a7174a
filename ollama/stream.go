package ollama

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
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
}

// OnResponse registers fn to be called once with the target's Content-Type after a 2xx
// status arrives and before the first frame, so a relay can send headers before the
// first token instead of holding it back.
func OnResponse(fn func(contentType string) error) StreamOption {
	return func(o *streamOptions) { o.onResponse = fn }
}

// Stream implements Client.
func (c *HTTPClient) Stream(ctx context.Context, path string, body []byte, fn func(frame []byte) error, opts ...StreamOption) (string, error) {
	var so streamOptions
	for _, o := range opts {
		o(&so)
	}
	// A private context lets an error from fn tear the connection down at once.
	ctx2, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := c.newRequest(ctx2, http.MethodPost, path, nil, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", c.transportError(ctx, "POST "+path, req, err)
	}
	defer resp.Body.Close()
	ct := resp.Header.Get("Content-Type")
	if resp.StatusCode/100 != 2 {
		return ct, readHTTPError(resp)
	}
	if so.onResponse != nil {
		if err := so.onResponse(ct); err != nil {
			return ct, err
		}
	}
	mt, _, _ := mime.ParseMediaType(ct)
	var readErr, fnErr error
	switch mt {
	case "application/x-ndjson":
		readErr, fnErr = splitFrames(resp.Body, isLineEnd, fn)
	case "text/event-stream":
		readErr, fnErr = splitFrames(resp.Body, isEventEnd, fn)
	default:
		var all []byte
		all, readErr = io.ReadAll(io.LimitReader(resp.Body, MaxFrameSize))
		if readErr == nil {
			fnErr = fn(all)
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

// isLineEnd says a line ends an NDJSON frame: every line does.
func isLineEnd([]byte) bool { return true }

// isEventEnd says a line ends an SSE event: a blank line ("\n" or "\r\n").
func isEventEnd(line []byte) bool {
	return len(bytes.TrimRight(line, "\r\n")) == 0
}

// splitFrames reads r line by line and hands fn each frame, made of the lines
// up to and including one for which end is true. Bytes are passed unchanged;
// a final frame not terminated before EOF is still delivered as sent.
func splitFrames(r io.Reader, end func(line []byte) bool, fn func([]byte) error) (readErr, fnErr error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var frame []byte
	for {
		chunk, err := br.ReadSlice('\n')
		frame = append(frame, chunk...)
		if len(frame) > MaxFrameSize {
			return ErrFrameTooLarge, nil
		}
		switch {
		case err == nil:
			// A whole line is in frame; the line starts where this read
			// began only if no ErrBufferFull preceded it, so test the tail.
			if end(lastLine(frame)) {
				if err := fn(frame); err != nil {
					return nil, err
				}
				frame = nil
			}
		case errors.Is(err, bufio.ErrBufferFull):
			// A long line: keep accumulating.
		case errors.Is(err, io.EOF):
			if len(frame) > 0 {
				if err := fn(frame); err != nil {
					return nil, err
				}
			}
			return nil, nil
		default:
			return err, nil
		}
	}
}

// lastLine returns the final line of frame, which ends in "\n".
func lastLine(frame []byte) []byte {
	i := bytes.LastIndexByte(frame[:len(frame)-1], '\n')
	return frame[i+1:]
}
