package ollama

import "mime"

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
