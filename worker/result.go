package worker

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// result builds a finished job's Result: the response in the shape a non-streamed request
// gets. For an NDJSON chat/generate stream that is the last line with the members Ollama
// joins replaced by their concatenation over all lines (ndjsonAnswer); for SSE the
// completion its chunks make (sseResult); otherwise the body itself. sawDone reports whether an NDJSON stream ended
// with done:true.
func result(kind broker.Kind, contentType string, frames [][]byte) (res []byte, sawDone bool) {
	if kind.Image() {
		// One JSON object, whatever the type says: Ollama's image routes keep the NDJSON
		// type of the generate they run on (ADR-0067).
		return bytes.Join(frames, nil), true
	}
	switch ollama.FramingOf(contentType) {
	case ollama.NDJSON:
		return ndjsonResult(kind, frames)
	case ollama.SSE:
		switch kind {
		case broker.KindOpenAIResponses:
			return responsesResult(frames), true
		case broker.KindAnthropicMessages:
			return messagesResult(frames), true
		}
		return sseResult(kind, frames), true
	}
	return bytes.Join(frames, nil), true
}

func ndjsonResult(kind broker.Kind, frames [][]byte) ([]byte, bool) {
	a := ndjsonAnswer{kind: kind}
	for _, f := range frames {
		a.add(f)
	}
	return a.result()
}

// The members of Ollama v0.17.4's ChatResponse, Message and GenerateResponse in the order
// it writes them, for the members a result adds to the final frame (object.put).
var (
	metricMembers   = []string{"total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"}
	chatMembers     = slices.Concat([]string{"model", "remote_model", "remote_host", "created_at", "message", "done", "done_reason", "_debug_info", "logprobs"}, metricMembers)
	messageMembers  = []string{"role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id"}
	generateMembers = slices.Concat([]string{"model", "remote_model", "remote_host", "created_at", "response", "thinking", "done", "done_reason", "context"},
		metricMembers, []string{"tool_calls", "_debug_info", "logprobs", "image", "completed", "total"})
)

// ndjsonAnswer builds, line by line, what Ollama answers a non-streamed request from the
// lines of the streamed one, as Ollama's handlers build it from their runner's responses.
// For a chat (ChatHandler) that is the final line, with the message's content and
// thinking the concatenation over all lines, its tool calls all the lines' (the final
// line's when none, or when the request offers no tools: finalCalls) and the logprobs
// all the lines' (none when empty); for a generate
// (GenerateHandler) the final line with the response and thinking the concatenation and
// the logprobs all the lines' (its tool calls are the final line's, the only one Ollama
// puts them in). For another kind it is the last line. It keeps the texts and lists, not
// the lines.
type ndjsonAnswer struct {
	kind broker.Kind
	// finalCalls keeps a chat's tool calls the final line's, as Ollama does for a
	// request that offers no tools.
	finalCalls      bool
	text, thinking  strings.Builder
	calls, logprobs []json.RawMessage
	final           []byte // the last line that is a JSON object
	last            []byte // the last line that is not blank
	// joined counts the bytes of the texts and list elements taken from the lines, own
	// the final line's share of them, skipped the lines that were no JSON object.
	joined, own, skipped int
}

// size is what the answer so far counts against the bound on an answer
// (Config.MaxAnswer): the answer as it will be built, that is the final line with the
// texts and lists of the lines before it joined in, and every line that was no JSON
// object (not kept, but read: an endless stream of them is bounded too). Each line
// counts once: the final line's own texts are in it already, and a last line that is
// not the final one is among the skipped. What is held is at most about twice the
// size: the final line's texts are also in the joined ones. For a kind that joins
// nothing it is the last line.
func (a *ndjsonAnswer) size() int {
	if a.kind != broker.KindChat && a.kind != broker.KindGenerate {
		return len(a.last)
	}
	return len(a.final) + a.joined - a.own + a.skipped
}

// add takes one line of the stream.
func (a *ndjsonAnswer) add(f []byte) {
	l := bytes.TrimSpace(f)
	if len(l) == 0 {
		// Read all the same: an endless stream of blank lines (a proxy's keep-alive, each
		// byte within the idle limit) is bounded too.
		a.skipped += len(f)
		return
	}
	a.last = l
	if a.kind != broker.KindChat && a.kind != broker.KindGenerate {
		return
	}
	// Only the members of the kind's own response are read, as Ollama's types read
	// them: a chat line's "response" of another type (a target that is not Ollama) is
	// no reason to skip the line, as Ollama's ChatResponse has no such member.
	var text, thinking string
	var calls, logprobs json.RawMessage
	ok := l[0] == '{'
	if ok && a.kind == broker.KindChat {
		var r chatLine
		ok = json.Unmarshal(l, &r) == nil
		text, thinking, calls, logprobs = r.Message.Content, r.Message.Thinking, r.Message.ToolCalls, r.Logprobs
	} else if ok {
		var r generateLine
		ok = json.Unmarshal(l, &r) == nil
		text, thinking, logprobs = r.Response, r.Thinking, r.Logprobs
	}
	if !ok {
		a.skipped += len(l)
		return
	}
	own := 0
	if a.kind == broker.KindChat && !a.finalCalls {
		a.calls, own = countedElems(a.calls, calls)
	}
	a.text.WriteString(text)
	a.thinking.WriteString(thinking)
	var n int
	a.logprobs, n = countedElems(a.logprobs, logprobs)
	own += n + len(text) + len(thinking)
	a.joined += own
	a.final, a.own = l, own
}

// chatLine and generateLine are the members of a chat's and a generate's streamed line
// that ndjsonAnswer joins, typed as in Ollama's ChatResponse and GenerateResponse.
type (
	chatLine struct {
		Message struct {
			Content   string          `json:"content"`
			Thinking  string          `json:"thinking"`
			ToolCalls json.RawMessage `json:"tool_calls"`
		} `json:"message"`
		Logprobs json.RawMessage `json:"logprobs"`
	}
	generateLine struct {
		Response string          `json:"response"`
		Thinking string          `json:"thinking"`
		Logprobs json.RawMessage `json:"logprobs"`
	}
)

// countedElems adds the elements of one line's array member, and says how many bytes
// they have.
func countedElems(elems []json.RawMessage, raw json.RawMessage) ([]json.RawMessage, int) {
	n := len(elems)
	elems = appendElems(elems, raw)
	size := 0
	for _, e := range elems[n:] {
		size += len(e)
	}
	return elems, size
}

// result is the answer built from the lines so far, nil before any; done reports whether
// the last line said done:true.
func (a *ndjsonAnswer) result() (res []byte, done bool) {
	if a.last == nil {
		return nil, false
	}
	var d struct {
		Done bool `json:"done"`
	}
	_ = json.Unmarshal(a.last, &d)
	var final *object
	if a.kind == broker.KindChat || a.kind == broker.KindGenerate {
		final = parseObject(a.final)
	}
	if final == nil {
		return a.last, d.Done
	}
	if a.kind == broker.KindChat {
		msg := parseObject(final.get("message"))
		if msg == nil {
			msg = &object{vals: map[string]json.RawMessage{}}
		}
		msg.put("content", a.text.String(), messageMembers)
		putText(msg, "thinking", a.thinking.String(), messageMembers)
		if len(a.calls) > 0 {
			msg.put("tool_calls", a.calls, messageMembers)
		}
		final.put("message", msg, chatMembers)
		putList(final, "logprobs", a.logprobs, chatMembers)
	} else {
		final.put("response", a.text.String(), generateMembers)
		putText(final, "thinking", a.thinking.String(), generateMembers)
		putList(final, "logprobs", a.logprobs, generateMembers)
	}
	return marshalResult(final, a.last), d.Done
}

// putText sets a text member Ollama omits when empty.
func putText(o *object, k, v string, order []string) {
	if v == "" {
		o.del(k)
		return
	}
	o.put(k, v, order)
}

// putList sets a list member Ollama omits when empty.
func putList(o *object, k string, v []json.RawMessage, order []string) {
	if len(v) == 0 {
		o.del(k)
		return
	}
	o.put(k, v, order)
}

// marshalResult encodes a result as json.Marshal does (compact, HTML-escaped), the form a
// record keeps unchanged (broker.HoldResult); last serves should it fail.
func marshalResult(o *object, last []byte) []byte {
	b, err := json.Marshal(o)
	if err != nil {
		return last
	}
	return b
}

// appendElems adds the elements of one frame's array member.
func appendElems(elems []json.RawMessage, raw json.RawMessage) []json.RawMessage {
	if len(raw) == 0 {
		return elems
	}
	var arr []json.RawMessage
	if json.Unmarshal(raw, &arr) == nil {
		return append(elems, arr...)
	}
	return elems
}

// streamError returns the error a target reported inside a 2xx stream, "" if none:
// Ollama ends a stream whose runner failed with an error frame (ollama.FrameError)
// instead of done:true; such a job failed, whatever the status said. It is the last
// frame a client reads anything in (ollama.LastFrame): a proxy's keep-alive after it
// does not hide it.
func streamError(contentType string, frames [][]byte) string {
	return ollama.FrameError(contentType, ollama.LastFrame(contentType, frames))
}
