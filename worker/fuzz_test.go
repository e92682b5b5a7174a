package worker

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Fuzz targets for what the worker does with the target's stream: building a job's
// result from it (cutting and publishing it is broker.StreamWriter's: see broker).
// Run one with: go test -run '^$' -fuzz '^FuzzResult$' -fuzztime 30s ./worker

// FuzzResult builds a result from fuzzed target frames: it must not panic, an SSE
// stream's is JSON if any, and for an NDJSON chat or generate stream with at least one
// decodable line (and no JSON line of another shape) it is valid JSON whose text is the
// concatenation of the lines' texts.
func FuzzResult(f *testing.F) {
	f.Add(uint8(0), "application/x-ndjson", []byte("{\"message\":{\"role\":\"assistant\",\"content\":\"he\"},\"done\":false}\n\x00{\"message\":{\"content\":\"llo\"},\"done\":true}\n"))
	f.Add(uint8(1), "application/x-ndjson; charset=utf-8", []byte("{\"response\":\"a\",\"tool_calls\":[{}]}\n\x00garbage\n\x00{\"response\":\"b\",\"done\":true}"))
	f.Add(uint8(2), "text/event-stream", []byte("data: {\"id\":1}\n\n\x00data: [DONE]\n\n"))
	f.Add(uint8(2), "text/event-stream", []byte("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\",\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\"}}]}}]}\n\n\x00data: {\"choices\":[],\"usage\":{}}\n\n"))
	f.Add(uint8(3), "application/json", []byte("{\"embeddings\":[[1]]}"))
	f.Add(uint8(0), "application/x-ndjson", []byte("{\"error\":\"boom\"}\n"))
	kinds := []broker.Kind{broker.KindChat, broker.KindGenerate, broker.KindOpenAIChat, broker.KindEmbed, broker.KindOpenAICompletion}
	f.Fuzz(func(t *testing.T, k uint8, ctype string, data []byte) {
		kind := kinds[int(k)%len(kinds)]
		frames := bytes.Split(data, []byte{0})
		res, _ := result(kind, ctype, frames)
		_ = streamError(ctype, frames)
		if ollama.FramingOf(ctype) == ollama.SSE && res != nil && !json.Valid(res) {
			t.Fatalf("SSE result %q is not JSON", res)
		}
		if kind != broker.KindChat && kind != broker.KindGenerate || ollama.FramingOf(ctype) != ollama.NDJSON {
			return
		}
		var text strings.Builder
		decoded := false
		for _, fr := range frames {
			l := bytes.TrimSpace(fr)
			if len(l) == 0 {
				continue
			}
			var chat ollama.ChatResponse
			var gen ollama.GenerateResponse
			var err error
			if kind == broker.KindChat {
				err = json.Unmarshal(l, &chat)
			} else {
				err = json.Unmarshal(l, &gen)
			}
			switch {
			case err == nil:
				decoded = true
				text.WriteString(chat.Message.Content + gen.Response)
			case json.Valid(l):
				return // JSON of another shape: whether it counts is the result's to say
			}
		}
		if !decoded {
			return
		}
		if !json.Valid(res) {
			t.Fatalf("result %q is not JSON", res)
		}
		var got string
		if kind == broker.KindChat {
			var r ollama.ChatResponse
			_ = json.Unmarshal(res, &r)
			got = r.Message.Content
		} else {
			var r ollama.GenerateResponse
			_ = json.Unmarshal(res, &r)
			got = r.Response
		}
		if got != text.String() {
			t.Fatalf("result text %q, want %q", got, text.String())
		}
	})
}

// FuzzRepeatStop judges fuzzed SSE streams, cut before their end, for Ollama's repeat
// stop and builds the answer it would give (ADR-0050): a target that is not Ollama, or a
// hostile one, may send anything. It must not panic, an answer must be JSON, and a
// stream that is judged a repeat stop must yield an answer for the OpenAI-compatible chat
// and completion (whose chunks it read to judge).
func FuzzRepeatStop(f *testing.F) {
	z := strings.Repeat("data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Z\"}}]}\n\n\x00", 31)
	f.Add(uint8(0), false, []byte(z))
	f.Add(uint8(1), false, []byte(strings.Repeat("data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"text\":\" Z \",\"index\":0}]}\n\n\x00", 31)))
	f.Add(uint8(2), true, []byte("data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[]}}\n\n\x00data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\"}}\n\n\x00data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n\x00"+
		strings.Repeat("data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Z\"}}\n\n\x00", 30)))
	f.Add(uint8(3), false, []byte("data: {\"type\":\"response.in_progress\",\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"output\":[]}}\n\n\x00data: {\"type\":\"response.output_item.added\",\"item\":{\"id\":\"msg_1\",\"type\":\"message\"}}\n\n\x00"+
		strings.Repeat("data: {\"type\":\"response.output_text.delta\",\"delta\":\"Z\"}\n\n\x00", 30)))
	kinds := []broker.Kind{broker.KindOpenAIChat, broker.KindOpenAICompletion, broker.KindAnthropicMessages, broker.KindOpenAIResponses}
	f.Fuzz(func(t *testing.T, k uint8, tools bool, data []byte) {
		kind := kinds[int(k)%len(kinds)]
		frames := bytes.Split(data, []byte{0})
		stopped := repeatStopped(kind, frames)
		res := repeatStoppedAnswer(kind, frames, tools, time.Unix(1796399825, 0))
		if res != nil && !json.Valid(res) {
			t.Fatalf("%s: answer %q is not JSON", kind, res)
		}
		if stopped && res == nil && (kind == broker.KindOpenAIChat || kind == broker.KindOpenAICompletion) {
			t.Fatalf("%s: judged a repeat stop, but no answer", kind)
		}
	})
}

// FuzzResultEvents builds results of the kinds FuzzResult leaves out (the Responses and
// Messages event streams, the image routes, the embedding routes) from fuzzed frames
// under a fuzzed Content-Type: a target that is not Ollama, or a hostile one, may send
// anything. It must not panic, and a result of an SSE stream is JSON if any.
func FuzzResultEvents(f *testing.F) {
	f.Add(uint8(0), "text/event-stream", []byte("event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"output\":[]}}\n\n\x00"+
		"data: {\"type\":\"response.output_item.added\",\"output_index\":0,\"item\":{\"id\":\"m\",\"type\":\"message\",\"content\":[]}}\n\n\x00"+
		"data: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"content_index\":0,\"delta\":\"hi\"}\n\n\x00"+
		"data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"output\":null}}\n\n"))
	f.Add(uint8(0), "text/event-stream", []byte("data: {\"type\":\"response.function_call_arguments.delta\",\"output_index\":-3,\"delta\":\"{\"}\n\n\x00data: {\"type\":\"response.reasoning_summary_text.delta\",\"output_index\":70000,\"delta\":\"x\"}\n\n"))
	f.Add(uint8(1), "text/event-stream", []byte("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[]}}\n\n\x00"+
		"data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\x00"+
		"data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n\x00"+
		"data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1}}\n\n"))
	f.Add(uint8(1), "text/event-stream", []byte("data: {\"type\":\"content_block_delta\",\"index\":-1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\"}}\n\n"))
	f.Add(uint8(2), "application/x-ndjson", []byte("{\"created\":1,\"data\":[{\"b64_json\":\"AAAA\"}]}"))
	f.Add(uint8(4), "application/json", []byte("{\"embedding\":[1,2]}"))
	f.Add(uint8(5), "application/json", []byte("{\"object\":\"list\",\"data\":[]}"))
	kinds := []broker.Kind{broker.KindOpenAIResponses, broker.KindAnthropicMessages, broker.KindOpenAIImages,
		broker.KindOpenAIImageEdits, broker.KindEmbeddings, broker.KindOpenAIEmbeddings}
	f.Fuzz(func(t *testing.T, k uint8, ctype string, data []byte) {
		kind := kinds[int(k)%len(kinds)]
		frames := bytes.Split(data, []byte{0})
		res, _ := result(kind, ctype, frames)
		_ = streamError(ctype, frames)
		if ollama.FramingOf(ctype) == ollama.SSE && !kind.Image() && res != nil && !json.Valid(res) {
			t.Fatalf("%s: SSE result %q is not JSON", kind, res)
		}
	})
}
