package worker

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
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

// A Messages stream without a content block (every token empty text) makes the message
// Ollama answers the non-streamed request with: "content":null, not [].
func TestMessagesResultWithoutBlocks(t *testing.T) {
	t.Parallel()
	frames := [][]byte{
		sse("message_start", `{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"tiny-a","content":[],"usage":{"input_tokens":36,"output_tokens":0}}}`),
		sse("message_delta", `{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"input_tokens":36,"output_tokens":3}}`),
		sse("message_stop", `{"type":"message_stop"}`),
	}
	want := `{"id":"msg_1","type":"message","role":"assistant","model":"tiny-a","content":null,"stop_reason":"max_tokens","usage":{"input_tokens":36,"output_tokens":3}}`
	if got := string(messagesResult(frames)); got != want {
		t.Errorf("result\n%s\nwant\n%s", got, want)
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
		`{"id":"rs_1","type":"reasoning","summary":[{"type":"summary_text","text":"think"}]},` +
		`{"id":"msg_1","type":"message","status":"in_progress","role":"assistant","content":[{"type":"output_text","text":"Hello","annotations":[]}]}]}`
	if got := string(responsesResult(items)); got != want {
		t.Errorf("cut stream:\n%s\nwant\n%s", got, want)
	}
	nullOutput := append(items, sse("response.completed", `{"type":"response.completed","response":{"id":"resp_2","object":"response","status":"completed","output":null}}`))
	if got, w := string(responsesResult(nullOutput)), strings.NewReplacer(`"in_progress","output"`, `"completed","output"`, `"rs_1"`, `"rs_resp_2"`).Replace(want); got != w {
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

// A Responses stream's Response is a map in Ollama's stream converter (members sorted);
// the result has the non-streamed answer's form (openai.ToResponse): members in its
// struct's order, empty members its struct omits left out, null reasoning settings
// dropped, the ids ToResponse makes from the response's for a reasoning item and the
// function calls (the stream's are random, and count calls per chunk), and the message
// ToResponse always makes when the model said nothing.
func TestResponsesResultHasTheNonStreamedShape(t *testing.T) {
	t.Parallel()
	completed := func(output string) [][]byte {
		return [][]byte{sse("response.completed", `{"type":"response.completed","response":{"completed_at":2,"created_at":1,"id":"resp_1",`+
			`"metadata":{},"object":"response","output":`+output+`,"reasoning":{"effort":null,"summary":"auto"},"status":"completed",`+
			`"text":{"format":{"name":"x","schema":{"z":1,"a":2},"type":"json_schema"}},"tools":[{"description":null,"name":"f","parameters":{"type":"object"},"strict":null,"type":"function"}],`+
			`"usage":{"input_tokens":3,"input_tokens_details":{"cached_tokens":0},"output_tokens":4,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":7},"x_new":true}}`)}
	}
	const head = `{"id":"resp_1","object":"response","created_at":1,"completed_at":2,"status":"completed","output":`
	const tail = `,"tools":[{"type":"function","name":"f","description":null,"strict":null,"parameters":{"type":"object"}}],` +
		`"text":{"format":{"type":"json_schema","name":"x","schema":{"z":1,"a":2}}},"reasoning":{"summary":"auto"},` +
		`"usage":{"input_tokens":3,"output_tokens":4,"total_tokens":7,"input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":0}},` +
		`"metadata":{},"x_new":true}`
	calls := `[{"encrypted_content":"hm","id":"rs_1","summary":[{"text":"hm","type":"summary_text"}],"type":"reasoning"},` +
		`{"arguments":"","call_id":"call_1","id":"fc_7_0","name":"f","status":"completed","type":"function_call"},` +
		`{"arguments":"{}","call_id":"call_2","id":"fc_8_0","name":"f","status":"completed","type":"function_call"}]`
	want := head + `[{"id":"rs_resp_1","type":"reasoning","summary":[{"type":"summary_text","text":"hm"}],"encrypted_content":"hm"},` +
		`{"id":"fc_resp_1_0","type":"function_call","status":"completed","call_id":"call_1","name":"f"},` +
		`{"id":"fc_resp_1_1","type":"function_call","status":"completed","call_id":"call_2","name":"f","arguments":"{}"}]` + tail
	if got := string(responsesResult(completed(calls))); got != want {
		t.Errorf("tool call:\n%s\nwant\n%s", got, want)
	}
	// A model that said nothing: the stream's output is null, the answer's one empty message.
	got := string(responsesResult(completed("null")))
	msg := regexp.MustCompile(`"id":"msg_\d+"`)
	want = head + `[{"id":"msg_","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"","annotations":[],"logprobs":[]}]}]` + tail
	if msg.FindString(got) == "" || msg.ReplaceAllString(got, `"id":"msg_"`) != want {
		t.Errorf("empty answer:\n%s\nwant\n%s", got, want)
	}
}

// An assembled Responses answer needs its stream's response.completed, the one terminal
// event Ollama writes: a stream that ends failed or incomplete is no answer its
// non-streamed call gives with a 200. Each dialect ends with its own event.
func TestResponsesStreamEndsAtCompleted(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		kind  broker.Kind
		event string
		ended bool
	}{
		{broker.KindOpenAIResponses, "response.completed", true},
		{broker.KindOpenAIResponses, "response.failed", false},
		{broker.KindOpenAIResponses, "response.incomplete", false},
		{broker.KindOpenAIResponses, "response.output_text.delta", false},
		{broker.KindOpenAIResponses, "message_stop", false},
		{broker.KindAnthropicMessages, "message_stop", true},
		{broker.KindAnthropicMessages, "response.completed", false},
	} {
		if got := sseEnded(tt.kind, [][]byte{sse(tt.event, `{"type":"`+tt.event+`"}`)}); got != tt.ended {
			t.Errorf("%s ending with %s: ended %v, want %v", tt.kind, tt.event, got, tt.ended)
		}
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
