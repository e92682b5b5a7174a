package worker

import (
	"bytes"
	"encoding/json"
	"fmt"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// answerCheck passes the frames of a 2xx answer on once one of them is what Ollama
// answers: a JSON body, an NDJSON line of JSON, an SSE event with JSON data. Until then
// it holds them. A target that answers something else (a proxy routed to the wrong
// port, another service on Ollama's, garbage) must reach no caller: the job fails, and
// a sync caller gets its status, not a 200 with the garbage. After the first valid
// frame everything passes as it comes: a stream cut short, or with an odd line, is the
// target's answer all the same, and the result keeps what parses.
type answerCheck struct {
	contentType func() string      // the answer's, known before its first frame
	pass        func([]byte) error // where the frames go
	held        [][]byte
	size        int // bytes held
	valid       bool
}

// maxHeld bounds what is held before a valid frame: an answer that sends more of what
// Ollama never sends fails without waiting for its end.
const maxHeld = 64 << 10

func (c *answerCheck) frame(f []byte) error {
	if c.valid {
		return c.pass(f)
	}
	c.held = append(c.held, f)
	c.size += len(f)
	if !validFrame(c.contentType(), f) {
		if c.size > maxHeld {
			return c.bad()
		}
		return nil
	}
	c.valid = true
	held := c.held
	c.held = nil
	for _, h := range held {
		if err := c.pass(h); err != nil {
			return err
		}
	}
	return nil
}

// end is the error of an answer that ended without a valid frame, nil otherwise.
func (c *answerCheck) end() error {
	if c.valid {
		return nil
	}
	return c.bad()
}

// quoted is how much of a bad answer its error quotes.
const quoted = 200

func (c *answerCheck) bad() error {
	start := bytes.Join(c.held, nil)
	cut := len(start) > quoted
	if cut {
		start = start[:quoted]
	}
	return &badAnswerError{contentType: c.contentType(), start: start, cut: cut}
}

// validFrame reports whether f is a frame of an Ollama answer of contentType.
func validFrame(contentType string, f []byte) bool {
	if ollama.FramingOf(contentType) == ollama.SSE {
		return sseJSON(f) != nil
	}
	return json.Valid(f)
}

// badAnswerError is a 2xx answer without a valid frame (answerCheck). It fails the job
// at once, as an HTTP error does: the target answered, and would answer the same again.
// Nor does it pause the worker as an unreachable target does: a target that answers is
// reachable, and /healthz's probe of it shows whether it is Ollama.
type badAnswerError struct {
	contentType string
	start       []byte // the answer's first bytes
	cut         bool   // start is not all of what was held
}

func (e *badAnswerError) Error() string {
	what := "not JSON"
	if ollama.FramingOf(e.contentType).Streamed() {
		what = "a stream with no JSON frame"
	}
	more := ""
	if e.cut {
		more = " …"
	}
	return fmt.Sprintf("bad answer from the target (Content-Type %q): %s: %q%s", e.contentType, what, e.start, more)
}
