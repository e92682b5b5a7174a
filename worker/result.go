package worker

import (
	"bytes"
	"encoding/json"
	"strings"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// result builds a finished job's Result: the response in the shape a non-streamed request
// gets. For an NDJSON chat/generate stream that is the last line with the text fields
// replaced by their concatenation over all lines; for SSE the completion its chunks make
// (sseResult); otherwise the body itself. sawDone reports whether an NDJSON stream ended
// with done:true.
func result(kind broker.Kind, contentType string, frames [][]byte) (res []byte, sawDone bool) {
	switch ollama.FramingOf(contentType) {
	case ollama.NDJSON:
		return ndjsonResult(kind, frames)
	case ollama.SSE:
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

func chatResult(lines [][]byte) []byte {
	var content, thinking strings.Builder
	var calls []json.RawMessage
	var final ollama.ChatResponse
	for _, l := range lines {
		var r ollama.ChatResponse
		if json.Unmarshal(l, &r) != nil {
			continue
		}
		content.WriteString(r.Message.Content)
		thinking.WriteString(r.Message.Thinking)
		calls = appendCalls(calls, r.Message.ToolCalls)
		final = r
	}
	final.Message.Content, final.Message.Thinking = content.String(), thinking.String()
	final.Message.ToolCalls = joinCalls(calls)
	b, err := json.Marshal(final)
	if err != nil {
		return lines[len(lines)-1]
	}
	return b
}

func generateResult(lines [][]byte) []byte {
	var response, thinking strings.Builder
	var calls []json.RawMessage
	var final ollama.GenerateResponse
	for _, l := range lines {
		var r ollama.GenerateResponse
		if json.Unmarshal(l, &r) != nil {
			continue
		}
		response.WriteString(r.Response)
		thinking.WriteString(r.Thinking)
		calls = appendCalls(calls, r.ToolCalls)
		final = r
	}
	final.Response, final.Thinking = response.String(), thinking.String()
	final.ToolCalls = joinCalls(calls)
	b, err := json.Marshal(final)
	if err != nil {
		return lines[len(lines)-1]
	}
	return b
}

// appendCalls adds the elements of one frame's tool_calls array.
func appendCalls(calls []json.RawMessage, raw json.RawMessage) []json.RawMessage {
	if len(raw) == 0 {
		return calls
	}
	var arr []json.RawMessage
	if json.Unmarshal(raw, &arr) == nil {
		return append(calls, arr...)
	}
	return calls
}

func joinCalls(calls []json.RawMessage) json.RawMessage {
	if len(calls) == 0 {
		return nil
	}
	b, _ := json.Marshal(calls)
	return b
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
