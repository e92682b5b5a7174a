package worker

import (
	"slices"
	"strings"
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
	if responsesResult(frames[1:2]) != nil {
		t.Error("a stream without a Response has a result")
	}

	// A stream that ended without its terminal event (Ollama ends long ones so), or whose
	// terminal Response has no output: the last Response with the output its items make.
	items := [][]byte{
		sse("response.created", `{"type":"response.created","sequence_number":0,"response":{"id":"resp_2","object":"response","status":"in_progress","output":[]}}`),
		sse("response.output_item.added", `{"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"id":"rs_1","type":"reasoning","summary":[]}}`),
		sse("response.reasoning_summary_text.delta", `{"type":"response.reasoning_summary_text.delta","output_index":0,"summary_index":0,"delta":"think"}`),
		sse("response.output_item.added", `{"type":"response.output_item.added","sequence_number":2,"output_index":1,"item":{"id":"msg_1","type":"message","status":"in_progress","role":"assistant","content":[]}}`),
		sse("response.content_part.added", `{"type":"response.content_part.added","sequence_number":3,"output_index":1,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}`),
		sse("response.output_text.delta", `{"type":"response.output_text.delta","sequence_number":4,"output_index":1,"content_index":0,"delta":"Hel"}`),
		sse("response.output_text.delta", `{"type":"response.output_text.delta","sequence_number":5,"output_index":1,"content_index":0,"delta":"lo"}`),
	}
	want := `{"id":"resp_2","object":"response","status":"in_progress","output":[` +
		`{"id":"rs_1","type":"reasoning","summary":[{"text":"think","type":"summary_text"}]},` +
		`{"id":"msg_1","type":"message","status":"in_progress","role":"assistant","content":[{"type":"output_text","text":"Hello","annotations":[]}]}]}`
	if got := string(responsesResult(items)); got != want {
		t.Errorf("cut stream:\n%s\nwant\n%s", got, want)
	}
	nullOutput := append(items, sse("response.completed", `{"type":"response.completed","response":{"id":"resp_2","object":"response","status":"completed","output":null}}`))
	if got, w := string(responsesResult(nullOutput)), strings.Replace(want, "in_progress", "completed", 1); got != w {
		t.Errorf("terminal without output:\n%s\nwant\n%s", got, w)
	}
	// The done events repeat the whole text and item: taken as they are, not added again.
	done := append(slices.Clone(items),
		sse("response.output_text.done", `{"type":"response.output_text.done","output_index":1,"content_index":0,"text":"Hello"}`),
		sse("response.content_part.done", `{"type":"response.content_part.done","output_index":1,"content_index":0,"part":{"type":"output_text","text":"Hello","annotations":[]}}`))
	if got := string(responsesResult(done)); got != want {
		t.Errorf("with the done events:\n%s\nwant\n%s", got, want)
	}
	if got := string(responsesResult(nullOutput[:1:1])); got != `{"id":"resp_2","object":"response","status":"in_progress","output":[]}` {
		t.Errorf("no items: %s", got)
	}
}

// BenchmarkStreamedResults builds the results of long Responses and Messages streams
// (16k text deltas): linear in the answer (16k deltas joined one by one into the block
// cost seconds).
func BenchmarkStreamedResults(b *testing.B) {
	const n = 16 << 10
	messages := [][]byte{sse("message_start", `{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","model":"x","content":[],"usage":{"input_tokens":1,"output_tokens":0}}}`),
		sse("content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`)}
	responses := [][]byte{sse("response.created", `{"type":"response.created","response":{"id":"r","object":"response","status":"in_progress","output":[]}}`),
		sse("response.output_item.added", `{"type":"response.output_item.added","output_index":0,"item":{"id":"msg","type":"message","role":"assistant","content":[]}}`)}
	for range n {
		messages = append(messages, sse("content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"word "}}`))
		responses = append(responses, sse("response.output_text.delta", `{"type":"response.output_text.delta","output_index":0,"content_index":0,"delta":"word "}`))
	}
	b.Run("messages", func(b *testing.B) {
		for b.Loop() {
			if len(messagesResult(messages)) < 5*n {
				b.Fatal("short result")
			}
		}
	})
	b.Run("responses", func(b *testing.B) {
		for b.Loop() {
			if len(responsesResult(responses)) < 5*n {
				b.Fatal("short result")
			}
		}
	})
}
