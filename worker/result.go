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
// joins replaced by their concatenation over all lines (chatResult, generateResult); for SSE the completion its chunks make
// (sseResult); otherwise the body itself. sawDone reports whether an NDJSON stream ended
// with done:true.
func result(kind broker.Kind, contentType string, frames [][]byte) (res []byte, sawDone bool) {
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
	var lines [][]byte
	for _, f := range frames {
		if l := bytes.TrimSpace(f); len(l) > 0 {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return nil, false
	}
	last := lines[len(lines)-1]
	var done struct {
		Done bool `json:"done"`
	}
	_ = json.Unmarshal(last, &done)
	switch kind {
	case broker.KindChat:
		return chatResult(lines), done.Done
	case broker.KindGenerate:
		return generateResult(lines), done.Done
	}
	return last, done.Done
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

// chatResult is what Ollama's ChatHandler answers a non-streamed request: the final
// frame, with the message's content and thinking the concatenation over all frames, its
// tool calls all the frames' (the final frame's when none) and the logprobs all the
// frames' (none when empty).
func chatResult(lines [][]byte) []byte {
	var content, thinking strings.Builder
	var calls, logprobs []json.RawMessage
	var final *object
	for _, l := range lines {
		var r struct {
			Message struct {
				Content   string          `json:"content"`
				Thinking  string          `json:"thinking"`
				ToolCalls json.RawMessage `json:"tool_calls"`
			} `json:"message"`
			Logprobs json.RawMessage `json:"logprobs"`
		}
		o := parseObject(l)
		if o == nil || json.Unmarshal(l, &r) != nil {
			continue
		}
		content.WriteString(r.Message.Content)
		thinking.WriteString(r.Message.Thinking)
		calls = appendElems(calls, r.Message.ToolCalls)
		logprobs = appendElems(logprobs, r.Logprobs)
		final = o
	}
	if final == nil {
		return lines[len(lines)-1]
	}
	msg := parseObject(final.vals["message"])
	if msg == nil {
		msg = &object{vals: map[string]json.RawMessage{}}
	}
	msg.put("content", content.String(), messageMembers)
	putText(msg, "thinking", thinking.String(), messageMembers)
	if len(calls) > 0 {
		msg.put("tool_calls", calls, messageMembers)
	}
	final.put("message", msg, chatMembers)
	putList(final, "logprobs", logprobs, chatMembers)
	return marshalResult(final, lines)
}

// generateResult is what Ollama's GenerateHandler answers a non-streamed request: the
// final frame, with the response and thinking the concatenation over all frames and the
// logprobs all the frames' (none when empty). Its tool calls are the final frame's, the
// only one Ollama puts them in.
func generateResult(lines [][]byte) []byte {
	var response, thinking strings.Builder
	var logprobs []json.RawMessage
	var final *object
	for _, l := range lines {
		var r struct {
			Response string          `json:"response"`
			Thinking string          `json:"thinking"`
			Logprobs json.RawMessage `json:"logprobs"`
		}
		o := parseObject(l)
		if o == nil || json.Unmarshal(l, &r) != nil {
			continue
		}
		response.WriteString(r.Response)
		thinking.WriteString(r.Thinking)
		logprobs = appendElems(logprobs, r.Logprobs)
		final = o
	}
	if final == nil {
		return lines[len(lines)-1]
	}
	final.put("response", response.String(), generateMembers)
	putText(final, "thinking", thinking.String(), generateMembers)
	putList(final, "logprobs", logprobs, generateMembers)
	return marshalResult(final, lines)
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
// record keeps unchanged (broker.HoldResult).
func marshalResult(o *object, lines [][]byte) []byte {
	b, err := json.Marshal(o)
	if err != nil {
		return lines[len(lines)-1]
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
// instead of done:true; such a job failed, whatever the status said.
func streamError(contentType string, frames [][]byte) string {
	if len(frames) == 0 {
		return ""
	}
	return ollama.FrameError(contentType, frames[len(frames)-1])
}
