package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// targetCall is how an attempt calls the target for a job: a chat, completion, response
// or Anthropic message its caller asked not to stream is called streamed, and the worker
// assembles the non-streamed answer from the stream as Ollama does (ADR-0050). Ollama
// sends a non-streamed answer only once it is whole, so a runner that hangs mid-answer
// would be seen only at the non-stream limit (30m by default); streamed, the idle limit
// (2m) catches it, and the first line tells when the answer began (the job turns
// working).
type targetCall struct {
	kind      broker.Kind
	body      []byte // what is sent: the job's body, or its streamed form
	streams   bool   // the target streams its answer
	assembled bool   // the answer is assembled from a stream the caller did not ask for
	tools     bool   // the request offers tools: a native chat's tool calls are all the lines'
	debug     bool   // a debug render (_debug_render_only): its OpenAI stream has no end
	// unloads is set when the request's keep_alive is 0: Ollama unloads the model once the
	// call ends, so an answer leaves nothing loaded. unloadOnly is set when it also has no
	// messages (a chat) or prompt (a generate): Ollama only unloads, loading nothing.
	unloads, unloadOnly bool
}

// newTargetCall is the call of a job of kind with body.
func newTargetCall(kind broker.Kind, body []byte) targetCall {
	// One read of the body for what decides the call (ollama.StreamsBody's rule: a body
	// it cannot read gets the route's default).
	var req struct {
		Stream    ollama.StreamMember `json:"stream"`
		Tools     []json.RawMessage   `json:"tools"`
		DebugOnly bool                `json:"_debug_render_only"`
		KeepAlive json.RawMessage     `json:"keep_alive"`
	}
	if json.Unmarshal(body, &req) != nil {
		req.Stream, req.Tools, req.DebugOnly, req.KeepAlive = ollama.StreamMember{}, nil, false, nil
	}
	c := targetCall{kind: kind, body: body, streams: ollama.Streams(kind.Path(), req.Stream.For(kind.Path())), debug: req.DebugOnly}
	if readsKeepAlive(kind) && ollama.ZeroKeepAlive(req.KeepAlive) {
		c.unloads, c.unloadOnly = true, unloadOnly(kind, body)
	}
	if c.streams || req.DebugOnly {
		// A debug render is answered with the rendered prompt, not a generation: nothing
		// to watch, and its OpenAI stream carries neither the debug info nor an end.
		return c
	}
	var (
		streamed []byte
		err      error
	)
	switch kind {
	case broker.KindChat, broker.KindGenerate, broker.KindOpenAIResponses, broker.KindAnthropicMessages:
		streamed, err = ollama.StreamedBody(body, false)
	case broker.KindOpenAIChat, broker.KindOpenAICompletion:
		// The usage ends the stream only when asked for; the non-streamed answer has it.
		streamed, err = ollama.StreamedBody(body, true)
	default:
		return c
	}
	if err != nil {
		return c // not an object: sent as it is, for Ollama to refuse
	}
	c.body, c.streams, c.assembled, c.tools = streamed, true, true, len(req.Tools) > 0
	return c
}

// readsKeepAlive reports whether Ollama reads a request's keep_alive on kind's route: its
// native chat, generate and embedding handlers do (v0.17.4); its OpenAI and Anthropic
// layers build their requests without one.
func readsKeepAlive(kind broker.Kind) bool {
	switch kind {
	case broker.KindChat, broker.KindGenerate, broker.KindEmbed, broker.KindEmbeddings:
		return true
	}
	return false
}

// unloadOnly reports whether a request of kind with keep_alive 0 is Ollama's unload
// request, answered without a model run: a chat without messages, a generate without a
// prompt (v0.17.4 ChatHandler, GenerateHandler). An embedding runs, then unloads.
func unloadOnly(kind broker.Kind, body []byte) bool {
	switch kind {
	case broker.KindChat:
		var req struct {
			Messages []struct{} `json:"messages"`
		}
		return json.Unmarshal(body, &req) == nil && len(req.Messages) == 0
	case broker.KindGenerate:
		var req struct {
			Prompt string `json:"prompt"`
		}
		return json.Unmarshal(body, &req) == nil && req.Prompt == ""
	}
	return false
}

// assembledFraming is the framing of the stream an assembled answer of kind is built
// from, and the Content-Type Ollama gives the non-streamed answer: its native handlers'
// (gin's JSON), its OpenAI and Anthropic middlewares' (a json.Encoder's).
func assembledFraming(kind broker.Kind) (ollama.Framing, string) {
	if kind == broker.KindChat || kind == broker.KindGenerate {
		return ollama.NDJSON, "application/json; charset=utf-8"
	}
	return ollama.SSE, "application/json"
}

// callTarget makes call c. The answer's Content-Type goes to setCT before its first
// frame, its frames to relay. An assembled answer reaches relay only at its end, as one
// frame: seen, when not nil, hears of each of the target's frames as it comes, and limit
// bounds what the assembly holds (0: no bound). It returns as Target.Stream does.
func (w *Worker) callTarget(ctx context.Context, c targetCall, setCT func(string) error, relay func([]byte) error, seen func(time.Time), limit int, log *slog.Logger) (string, error) {
	if !c.assembled {
		var ct string
		onCT := func(t string) error { ct = t; return setCT(t) }
		ct, err := w.cfg.Target.Stream(ctx, c.kind.Path(), c.body, untilError(&ct, relay), append(w.cfg.streamOptions(c.streams), ollama.OnResponse(onCT))...)
		if errors.Is(err, errErrorFrame) {
			err = nil // the stream ends at its error frame, the last relayed
		}
		return ct, err
	}
	a := &assembly{kind: c.kind, tools: c.tools, answer: ndjsonAnswer{kind: c.kind, finalCalls: !c.tools}, limit: limit, setCT: setCT, relay: relay, seen: seen}
	a.framing, a.outCT = assembledFraming(c.kind)
	// The target's frames pass the answer check themselves: one that is not Ollama fails
	// with what it sent, not with the assembly of it.
	a.check = answerCheck{contentType: func() string { return a.ct }, pass: a.take}
	ct, err := w.cfg.Target.Stream(ctx, c.kind.Path(), c.body, a.frame, append(w.cfg.streamOptions(true), ollama.OnResponse(a.contentType))...)
	return a.end(ct, err, log)
}

// errErrorFrame stops a call at a frame that reports the target's error
// (ollama.FrameError), once the frame is relayed: the answer ends there. Ollama's client
// returns at the first line with an "error" (api.Client.stream, v0.17.4), an OpenAI SDK
// raises at the error event, and Ollama's own non-streamed handler answers the first
// error it meets: what a target sends after it is no answer any client reads, and the
// job is judged by that frame, its last (streamError).
var errErrorFrame = errors.New("the target's stream reported an error")

// untilError returns relay, ended by errErrorFrame after it relayed a frame that reports
// the target's error in an answer of Content-Type *ct.
func untilError(ct *string, relay func([]byte) error) func([]byte) error {
	return func(f []byte) error {
		if err := relay(f); err != nil {
			return err
		}
		// Only a frame holding "error" (quotes included) can be an error frame: the
		// others, nearly all, are not parsed for it.
		if bytes.Contains(f, errorMember) && ollama.FrameError(*ct, f) != "" {
			return errErrorFrame
		}
		return nil
	}
}

// cut returns the error of a streamed answer relayed as it came whose SSE stream stopped
// before its end (sseEnded) for another reason than Ollama's repeat stop: Ollama's /v1
// writers drop the error line of a runner that failed mid-answer (the OpenAI ones write a
// chunk without a model in its place), so the stream just stops, where the native stream
// ends with the error line (streamError). Its attempt failed, as a runner's death does
// (retried, ADR-0085): a cut answer must not be stored as a whole one, and a sync caller
// gets an error event after it (its SDK raises an error rather than return part of an
// answer as all of it). nil for any other answer.
func (c targetCall) cut(ct string, frames [][]byte) error {
	if !c.streams || c.assembled || c.debug || ollama.FramingOf(ct) != ollama.SSE || streamError(ct, frames) != "" {
		return nil
	}
	switch c.kind {
	case broker.KindOpenAIChat, broker.KindOpenAICompletion, broker.KindOpenAIResponses, broker.KindAnthropicMessages:
	default:
		return nil
	}
	if sseEnded(c.kind, frames) || repeatStopped(c.kind, frames) {
		return nil
	}
	return &ollama.HTTPError{StatusCode: http.StatusInternalServerError, Message: errStreamCut}
}

// assembly builds a non-streamed answer from the target's stream: NDJSON lines for a
// native chat or generate (ndjsonAnswer), SSE events for an OpenAI-compatible chat or
// completion (sseResult), a response (responsesResult) and an Anthropic message
// (messagesResult). An answer in another
// framing (a target that is not Ollama, or one that answers JSON all the same) is relayed
// as it comes, for the run's answer check to judge.
type assembly struct {
	kind       broker.Kind
	tools      bool           // the request offers tools
	framing    ollama.Framing // what the stream is to be
	outCT      string         // the assembled answer's Content-Type
	answer     ndjsonAnswer   // NDJSON: the answer so far
	events     [][]byte       // SSE: the events so far
	check      answerCheck    // the target's frames, before they are assembled
	limit      int
	size       int // SSE: the events' bytes
	setCT      func(string) error
	relay      func([]byte) error
	seen       func(time.Time)
	ct         string // the target's Content-Type
	assembling bool   // the target streams as asked: its frames are assembled
	failed     string // the error a frame of the stream reported, where it ended
}

func (a *assembly) contentType(ct string) error {
	a.ct = ct
	if ollama.FramingOf(ct) != a.framing {
		return a.setCT(ct)
	}
	a.assembling = true
	return a.setCT(a.outCT)
}

func (a *assembly) frame(f []byte) error {
	if a.seen != nil {
		a.seen(time.Now())
	}
	if !a.assembling {
		return untilError(&a.ct, a.relay)(f)
	}
	return a.check.frame(f)
}

// errStreamCut is the error of an assembled SSE answer whose stream stopped before its
// end.
const errStreamCut = "the target's stream ended before its answer was complete (its runner may have failed)"

// sseEnded reports whether an SSE stream of kind reached its end: OpenAI's "data: [DONE]"
// (Ollama writes it after the last chunk, the usage's included), Anthropic's
// message_stop event, the Responses API's response.completed (the one terminal event
// Ollama writes: a stream that ends in response.failed or .incomplete is not an answer
// its non-streamed call would give with a 200). The end is the last event a client reads
// (ollama.LastFrame): blank lines or keep-alive comments after it do not undo it.
func sseEnded(kind broker.Kind, events [][]byte) bool {
	last := ollama.LastFrame(ollama.ContentTypeSSE, events)
	if last == nil {
		return false
	}
	if kind == broker.KindAnthropicMessages || kind == broker.KindOpenAIResponses {
		data := sseJSON(last)
		var e struct {
			Type string `json:"type"`
		}
		if data == nil || json.Unmarshal(data, &e) != nil {
			return false
		}
		switch e.Type {
		case "message_stop":
			return kind == broker.KindAnthropicMessages
		case "response.completed":
			return kind == broker.KindOpenAIResponses
		}
		return false
	}
	for data := range ollama.EventData(last) {
		if string(bytes.TrimSpace(data)) == "[DONE]" {
			return true
		}
	}
	return false
}

// errorMember is how the member an error frame has begins.
var errorMember = []byte(`"error"`)

// take takes a frame of the target's stream once the answer check has seen a valid one.
func (a *assembly) take(f []byte) error {
	// Only a frame holding "error" (quotes included) can be an error frame: the others,
	// nearly all, are not parsed for it.
	msg := ""
	if bytes.Contains(f, errorMember) {
		msg = ollama.FrameError(a.ct, f)
	}
	switch {
	case msg != "":
		// Ollama ends a stream whose runner failed with this frame; the non-streamed call
		// gets it as an error status instead, and the answer ends here (errErrorFrame).
		a.failed = msg
		return errErrorFrame
	case a.framing == ollama.NDJSON:
		a.answer.add(f)
	default:
		a.events = append(a.events, f)
		a.size += broker.FrameCost(f) // kept one by one, as the stream writer keeps them
	}
	size := a.size
	if a.framing == ollama.NDJSON {
		size = a.answer.size()
	}
	if a.limit > 0 && size > a.limit {
		return fmt.Errorf("%w: the target's answer passed %d bytes", broker.ErrAnswerTooLarge, a.limit)
	}
	return nil
}

// end ends the call that returned ct and err: an assembled answer goes to relay as one
// frame, and an error frame of the stream becomes the error status Ollama answers a
// non-streamed call with (500: the stream no longer carries the status).
func (a *assembly) end(ct string, err error, log *slog.Logger) (string, error) {
	if errors.Is(err, errErrorFrame) {
		err = nil // the stream ended at its error frame (a.failed, or relayed)
	}
	if err != nil || !a.assembling {
		return ct, err
	}
	if err := a.check.end(); err != nil {
		return ct, err
	}
	if a.failed != "" {
		return a.outCT, &ollama.HTTPError{StatusCode: http.StatusInternalServerError, Message: a.failed}
	}
	var res []byte
	if a.framing == ollama.NDJSON {
		var done bool
		res, done = a.answer.result()
		if !done {
			log.Warn("target stream ended without done:true; the assembled answer says done:false, as Ollama's would")
		}
	} else {
		ended := sseEnded(a.kind, a.events)
		if !ended && !repeatStopped(a.kind, a.events) {
			// Ollama's /v1 writers do not pass on the error line of a runner that failed
			// mid-answer (the OpenAI ones make it a chunk without a model, the Responses
			// and Anthropic ones write nothing): the stream just stops before its end. The
			// non-streamed call would have got the error as a 500; a cut answer must not
			// pass as whole.
			return a.outCT, &ollama.HTTPError{StatusCode: http.StatusInternalServerError, Message: errStreamCut}
		}
		if ended {
			res, _ = result(a.kind, a.ct, a.events)
		} else {
			log.Warn("target stream stopped after one token repeated; the assembled answer is the text so far, as Ollama's is", "repeats", repeatLimit)
			res = repeatStoppedAnswer(a.kind, a.events, a.tools, time.Now())
		}
		if res != nil {
			res = append(res, '\n') // Ollama's middlewares write it with a json.Encoder
		}
	}
	if res == nil {
		return a.outCT, nil // no event parsed as a chunk: the run's answer check fails it
	}
	return a.outCT, a.relay(res)
}
