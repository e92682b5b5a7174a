package worker

import (
	"encoding/json"
	"slices"
	"strings"
)

// The SSE dialects whose events are not OpenAI chat chunks: the Responses API and
// Anthropic's Messages API, as Ollama v0.17.4 writes them (middleware.ResponsesWriter,
// AnthropicWriter). A result is what the same request without stream gets.

// responsesResult is the Response object of a Responses API stream: the one its last
// terminal event (response.completed, .incomplete, .failed) carries whole, nil if none.
func responsesResult(frames [][]byte) []byte {
	var out []byte
	for _, data := range sseData(frames) {
		var e struct {
			Type     string          `json:"type"`
			Response json.RawMessage `json:"response"`
		}
		if json.Unmarshal(data, &e) != nil || len(e.Response) == 0 {
			continue
		}
		switch e.Type {
		case "response.completed", "response.incomplete", "response.failed":
			out = e.Response
		}
	}
	return out
}

// anthropicBlockMembers is Ollama's anthropic.ContentBlock member order.
var anthropicBlockMembers = []string{"type", "text", "citations", "source", "id", "name", "input", "content", "tool_use_id", "is_error", "thinking", "signature", "data"}

// anthropicMessageMembers is Ollama's anthropic.MessagesResponse member order.
var anthropicMessageMembers = []string{"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"}

// messagesResult is the message an Anthropic Messages stream makes: message_start's
// message with the content blocks built from their start and deltas (text and thinking
// joined, a signature set, a tool call's input from its JSON parts), and message_delta's
// stop reason and usage. Nil without a message_start.
func messagesResult(frames [][]byte) []byte {
	var msg *object
	var blocks []*object
	parts := map[int]*strings.Builder{} // a tool call's input JSON, by block
	block := func(i int) *object {
		if i < 0 || i >= len(blocks) {
			return nil
		}
		return blocks[i]
	}
	for _, data := range sseData(frames) {
		var e struct {
			Type         string          `json:"type"`
			Index        int             `json:"index"`
			Message      json.RawMessage `json:"message"`
			ContentBlock json.RawMessage `json:"content_block"`
			Delta        json.RawMessage `json:"delta"`
			Usage        json.RawMessage `json:"usage"`
		}
		if json.Unmarshal(data, &e) != nil {
			continue
		}
		switch e.Type {
		case "message_start":
			msg = parseObject(e.Message)
		case "content_block_start":
			b := parseObject(e.ContentBlock)
			if b == nil || e.Index < 0 || e.Index > 1<<16 {
				continue
			}
			for len(blocks) <= e.Index {
				blocks = append(blocks, nil)
			}
			blocks[e.Index] = b
		case "content_block_delta":
			b := block(e.Index)
			var d struct {
				Type        string `json:"type"`
				Text        string `json:"text"`
				Thinking    string `json:"thinking"`
				Signature   string `json:"signature"`
				PartialJSON string `json:"partial_json"`
			}
			if b == nil || json.Unmarshal(e.Delta, &d) != nil {
				continue
			}
			switch d.Type {
			case "text_delta":
				b.put("text", stringMember(b, "text")+d.Text, anthropicBlockMembers)
			case "thinking_delta":
				b.put("thinking", stringMember(b, "thinking")+d.Thinking, anthropicBlockMembers)
			case "signature_delta":
				b.put("signature", d.Signature, anthropicBlockMembers)
			case "input_json_delta":
				if parts[e.Index] == nil {
					parts[e.Index] = &strings.Builder{}
				}
				parts[e.Index].WriteString(d.PartialJSON)
			}
		case "message_delta":
			if msg == nil {
				continue
			}
			if d := parseObject(e.Delta); d != nil {
				for _, k := range d.keys {
					msg.put(k, d.vals[k], anthropicMessageMembers)
				}
			}
			if u := parseObject(e.Usage); u != nil {
				usage := parseObject(msg.vals["usage"])
				if usage == nil {
					usage = &object{vals: map[string]json.RawMessage{}}
				}
				for _, k := range u.keys {
					usage.put(k, u.vals[k], slices.Concat(usage.keys, []string{k}))
				}
				msg.put("usage", usage, anthropicMessageMembers)
			}
		}
	}
	if msg == nil {
		return nil
	}
	content := make([]*object, 0, len(blocks))
	for i, b := range blocks {
		if b == nil {
			continue
		}
		if p := parts[i]; p != nil && json.Valid([]byte(p.String())) {
			b.put("input", json.RawMessage(p.String()), anthropicBlockMembers)
		}
		content = append(content, b)
	}
	msg.put("content", content, anthropicMessageMembers)
	out, err := json.Marshal(msg)
	if err != nil {
		return nil
	}
	return out
}

// stringMember is o's member k as a string, "" when absent or not one.
func stringMember(o *object, k string) string {
	var s string
	_ = json.Unmarshal(o.vals[k], &s)
	return s
}
