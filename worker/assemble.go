package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// assembledContentType is the Content-Type of an assembled answer, Ollama's for a
// non-streamed chat or generate answer.
const assembledContentType = "application/json; charset=utf-8"

// targetCall is how an attempt calls the target for a job: a chat or generate its caller
// asked not to stream is called streamed, and the worker assembles the non-streamed
// answer from the lines as Ollama does (ADR-0050). Ollama sends a non-streamed answer
// only once it is whole, so a runner that hangs mid-answer would be seen only at the
// non-stream limit (30m by default); streamed, the idle limit (2m) catches it, and the
// first line tells when the answer began.
type targetCall struct {
	kind      broker.Kind
	body      []byte // what is sent: the job's body, or its streamed form
	streams   bool   // the target streams its answer
	assembled bool   // the answer is assembled from a stream the caller did not ask for
	tools     bool   // the request offers tools: the answer's tool calls are all the lines'
}

// newTargetCall is the call of a job of kind with body.
func newTargetCall(kind broker.Kind, body []byte) targetCall {
	c := targetCall{kind: kind, body: body, streams: ollama.StreamsBody(kind.Path(), body)}
	if !c.streams && (kind == broker.KindChat || kind == broker.KindGenerate) {
		if streamed, err := ollama.StreamedBody(body); err == nil {
			c.body, c.streams, c.assembled = streamed, true, true
			var req struct {
				Tools []json.RawMessage `json:"tools"`
			}
			c.tools = json.Unmarshal(body, &req) == nil && len(req.Tools) > 0
		}
	}
	return c
}

// callTarget makes call c. The answer's Content-Type goes to setCT before its first
// frame, its frames to relay. An assembled answer reaches relay only at its end, as one
// frame: seen, when not nil, hears of each of the target's lines as it comes, and limit
// bounds what the assembly holds (0: no bound). It returns as Target.Stream does.
func (w *Worker) callTarget(ctx context.Context, c targetCall, setCT func(string) error, relay func([]byte) error, seen func(time.Time), limit int, log *slog.Logger) (string, error) {
	if !c.assembled {
		return w.cfg.Target.Stream(ctx, c.kind.Path(), c.body, relay, append(w.cfg.streamOptions(c.streams), ollama.OnResponse(setCT))...)
	}
	a := &assembly{answer: ndjsonAnswer{kind: c.kind, finalCalls: !c.tools}, limit: limit, setCT: setCT, relay: relay, seen: seen}
	// The target's lines pass the answer check themselves: one that is not Ollama fails
	// with what it sent, not with the assembly of it.
	a.check = answerCheck{contentType: func() string { return a.ct }, pass: a.line}
	ct, err := w.cfg.Target.Stream(ctx, c.kind.Path(), c.body, a.frame, append(w.cfg.streamOptions(true), ollama.OnResponse(a.contentType))...)
	return a.end(ct, err, log)
}

// assembly builds a non-streamed answer from the target's NDJSON stream. An answer in
// another framing (a target that is not Ollama, or one that answers JSON all the same)
// is relayed as it comes, for the run's answer check to judge.
type assembly struct {
	answer ndjsonAnswer
	check  answerCheck // the target's lines, before they are assembled
	limit  int
	setCT  func(string) error
	relay  func([]byte) error
	seen   func(time.Time)
	ct     string // the target's Content-Type
	ndjson bool   // the target streams NDJSON: its lines are assembled
	failed string // the error a line of the stream reported
}

func (a *assembly) contentType(ct string) error {
	a.ct = ct
	if ollama.FramingOf(ct) != ollama.NDJSON {
		return a.setCT(ct)
	}
	a.ndjson = true
	return a.setCT(assembledContentType)
}

func (a *assembly) frame(f []byte) error {
	if a.seen != nil {
		a.seen(time.Now())
	}
	if !a.ndjson {
		return a.relay(f)
	}
	return a.check.frame(f)
}

// line takes a line of the target's stream once the answer check has seen a valid one.
func (a *assembly) line(f []byte) error {
	if msg := ollama.FrameError(ollama.ContentTypeNDJSON, f); msg != "" {
		// Ollama ends a stream whose runner failed with this line; the non-streamed
		// call gets it as an error status instead.
		a.failed = msg
		return nil
	}
	a.answer.add(f)
	if a.limit > 0 && a.answer.size > a.limit {
		return fmt.Errorf("%w: the target's answer passed %d bytes", broker.ErrAnswerTooLarge, a.limit)
	}
	return nil
}

// end ends the call that returned ct and err: an assembled answer goes to relay as one
// frame, and an error line of the stream becomes the error status Ollama answers a
// non-streamed call with (500: the stream no longer carries the status).
func (a *assembly) end(ct string, err error, log *slog.Logger) (string, error) {
	if err != nil || !a.ndjson {
		return ct, err
	}
	if err := a.check.end(); err != nil {
		return ct, err
	}
	if a.failed != "" {
		return assembledContentType, &ollama.HTTPError{StatusCode: http.StatusInternalServerError, Message: a.failed}
	}
	res, done := a.answer.result()
	if !done {
		log.Warn("target stream ended without done:true; the assembled answer says done:false, as Ollama's would")
	}
	return assembledContentType, a.relay(res)
}
