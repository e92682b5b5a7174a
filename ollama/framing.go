package ollama

import (
	"bytes"
	"encoding/json"
	"iter"
	"mime"
)

// Content types of Ollama's streamed answers: NDJSON on its own routes (/api/chat,
// /api/generate), server-sent events on its OpenAI-compatible ones (/v1/...).
const (
	ContentTypeNDJSON = "application/x-ndjson"
	ContentTypeSSE    = "text/event-stream"
)

// Framing is how an answer's body is cut into frames.
type Framing int

const (
	// NotStreamed: the body is one piece (a non-streamed JSON answer, or anything else).
	NotStreamed Framing = iota
	// NDJSON: one JSON object a line.
	NDJSON
	// SSE: server-sent events, each ended by a blank line.
	SSE
)

// FramingOf tells from an answer's Content-Type whether it is streamed, and how. It is
// the one place that rule lives: the client splits a body by it, the worker builds
// results and finds in-stream errors by it, and the gateway relays frames by it. A
// Content-Type whose parameters do not parse still counts by its media type, as
// mime.ParseMediaType returns it.
func FramingOf(contentType string) Framing {
	mt, _, _ := mime.ParseMediaType(contentType)
	switch mt {
	case ContentTypeNDJSON:
		return NDJSON
	case ContentTypeSSE:
		return SSE
	}
	return NotStreamed
}

// Streamed reports whether frames of this framing are relayed as they come.
func (f Framing) Streamed() bool { return f != NotStreamed }

// FrameError returns the error message of a stream's error frame, "" if frame is not one.
// Ollama ends a stream whose runner failed with a line {"error":"..."} instead of its last
// frame (its OpenAI and Anthropic writers, v0.17.4, drop that line once the stream has
// begun: their stream just stops; a proxy or another server may send an SSE event data:
// {"error":{"message":"..."}}, or an Anthropic error event of the same shape). The worker fails such a job by it,
// and the gateway knows its client has the error already: so a frame counts only when a
// client reads it as an error, an NDJSON line whose "error" is a string, an SSE event
// whose data's "error" has a "message".
func FrameError(contentType string, frame []byte) string {
	last := bytes.TrimSpace(frame)
	framing := FramingOf(contentType)
	switch framing {
	case SSE:
		last = lastEventData(frame)
	case NotStreamed:
		return ""
	}
	var v struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(last, &v) != nil || len(v.Error) == 0 {
		return ""
	}
	if framing == SSE {
		var obj struct {
			Message *string `json:"message"`
		}
		if json.Unmarshal(v.Error, &obj) != nil || obj.Message == nil {
			return ""
		}
		return *obj.Message
	}
	var msg string
	if json.Unmarshal(v.Error, &msg) != nil {
		return ""
	}
	return msg
}

// lastEventData is the data of the last event in b that has any (EventData), nil if none:
// a frame without a data line is no event a client reads.
func lastEventData(b []byte) []byte {
	var last []byte
	for data := range EventData(b) {
		last = data
	}
	return last
}

// EventData yields the data of each event in b as an SSE client reads it (the WHATWG
// event stream rules): a "data" field's values, each without the one space that may
// follow its colon, joined by newlines; lines end with LF, CRLF or CR; a line that starts
// with a space, a comment (":") or any other field adds nothing; an event whose data is
// empty is none. An event not yet ended by a blank line (the last of a stream that
// ended without one) counts too: the gateway ends such an event when the job failed, so
// a client reads a target's error in it; a stream that is done goes to its client as
// the target ended it, that event unfinished (a client may drop it). It is the one
// reading of events the worker and the gateway share.
func EventData(b []byte) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		var data []byte
		seen := false
		for len(b) > 0 {
			line := b
			if i := bytes.IndexAny(b, "\r\n"); i < 0 {
				b = nil
			} else {
				cr := b[i] == '\r'
				line, b = b[:i], b[i+1:]
				if cr && len(b) > 0 && b[0] == '\n' {
					b = b[1:]
				}
			}
			if len(line) == 0 {
				if len(data) > 0 && !yield(data) {
					return
				}
				data, seen = nil, false
				continue
			}
			name, value, _ := bytes.Cut(line, []byte(":"))
			if string(name) != "data" {
				continue
			}
			value = bytes.TrimPrefix(value, []byte(" "))
			if seen {
				data = append(data, '\n')
			}
			data, seen = append(data, value...), true
		}
		if len(data) > 0 {
			yield(data)
		}
	}
}

// Holds reports whether a client reads anything in frame, a frame of an answer of
// contentType: an NDJSON line that is not all white space (Ollama's clients skip blank
// lines), an SSE frame with an event's data (EventData: an empty line, a comment, a
// field other than data gives a client no event). A frame of an answer not streamed
// holds what it has.
func Holds(contentType string, frame []byte) bool {
	switch FramingOf(contentType) {
	case NDJSON:
		return len(bytes.TrimSpace(frame)) > 0
	case SSE:
		for range EventData(frame) {
			return true
		}
		return false
	}
	return len(frame) > 0
}

// LastFrame returns the last of frames that Holds something, nil if none: where the
// stream ends for its client, whatever blank lines or keep-alive comments a proxy sent
// after it (or the LF of a CRLF that came after its CR, which begins a frame of its own).
// The end of a stream, and its error frame, are read from it.
func LastFrame(contentType string, frames [][]byte) []byte {
	for i := len(frames) - 1; i >= 0; i-- {
		if Holds(contentType, frames[i]) {
			return frames[i]
		}
	}
	return nil
}
