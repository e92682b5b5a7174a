package worker

import (
	"encoding/json"
	"testing"
)

// sse makes one SSE frame of an event and its JSON data.
func sse(event, data string) []byte { return []byte("event: " + event + "\ndata: " + data + "\n\n") }

// A Messages stream's result is the message the same request without stream gets: text
// and thinking joined per block, a tool call's input from its JSON parts, the stop
// reason and usage of message_delta, members in Ollama's order.
func TestMessagesResult(t *testing.T) {
	t.Parallel()
	frames := [][]byte{
		sse("message_start", `{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"tiny-a","content":[],"usage":{"input_tokens":7,"output_tokens":0}}}`),
		sse("content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}`),
		sse("content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}`),
		sse("content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"m."}}`),
		sse("content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"sig"}}`),
		sse("content_block_stop", `{"type":"content_block_stop","index":0}`),
		sse("content_block_start", `{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}`),
		sse("ping", `{"type":"ping"}`),
		sse("content_block_delta", `{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hello"}}`),
		sse("content_block_delta", `{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":" there"}}`),
		sse("content_block_stop", `{"type":"content_block_stop","index":1}`),
		sse("content_block_start", `{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}`),
		sse("content_block_delta", `{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"city\":"}}`),
		sse("content_block_delta", `{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"\"Paris\"}"}}`),
		sse("content_block_stop", `{"type":"content_block_stop","index":2}`),
		sse("message_delta", `{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"input_tokens":7,"output_tokens":12}}`),
		sse("message_stop", `{"type":"message_stop"}`),
	}
	want := `{"id":"msg_1","type":"message","role":"assistant","model":"tiny-a","content":[` +
		`{"type":"thinking","thinking":"hmm.","signature":"sig"},` +
		`{"type":"text","text":"Hello there"},` +
		`{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}],` +
		`"stop_reason":"tool_use","usage":{"input_tokens":7,"output_tokens":12}}`
	if got := string(messagesResult(frames)); got != want {
		t.Errorf("result\n%s\nwant\n%s", got, want)
	}
	if got := messagesResult(frames[1:]); got != nil {
		t.Errorf("without message_start: %s, want nil", got)
	}
}

// A Responses stream's result is the Response its terminal event carries.
func TestResponsesResult(t *testing.T) {
	t.Parallel()
	final := `{"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","content":[{"type":"output_text","text":"Hi"}]}]}`
	frames := [][]byte{
		sse("response.created", `{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","status":"in_progress","output":[]}}`),
		sse("response.output_text.delta", `{"type":"response.output_text.delta","sequence_number":1,"delta":"Hi"}`),
		sse("response.completed", `{"type":"response.completed","sequence_number":2,"response":`+final+`}`),
	}
	if got := string(responsesResult(frames)); got != final {
		t.Errorf("result %s, want %s", got, final)
	}
	if !json.Valid(responsesResult(frames)) || responsesResult(frames[:2]) != nil {
		t.Error("a stream without its terminal event has no result")
	}
}
