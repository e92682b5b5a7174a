package worker

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
)

// The SSE dialects whose events are not OpenAI chat chunks: the Responses API and
// Anthropic's Messages API, as Ollama v0.17.4 writes them (middleware.ResponsesWriter,
// AnthropicWriter). A result is what the same request without stream gets.

// responsesResult is the Response object of a Responses API stream: the one its last
// terminal event (response.completed, .incomplete, .failed) carries whole. A stream that
// ended without one (Ollama ends some without), or whose terminal Response has no
// output, gets the last Response it carried with the output built from the item events
// (items, their content parts and text, reasoning summaries, call arguments). Nil if no
// event carried a Response.
func responsesResult(frames [][]byte) []byte {
	var last, terminal *object
	var items []*object
	parts := map[int][]*object{}           // a message item's content parts, by output index
	summary := map[int]*strings.Builder{}  // a reasoning item's summary text
	args := map[int]*strings.Builder{}     // a function call's arguments
	texts := map[[2]int]*strings.Builder{} // a content part's text, by output and content index
	at := func(list []*object, i int) ([]*object, bool) {
		if i < 0 || i > 1<<16 {
			return list, false
		}
		for len(list) <= i {
			list = append(list, nil)
		}
		return list, true
	}
	for _, data := range sseData(frames) {
		var e struct {
			Type         string          `json:"type"`
			Response     json.RawMessage `json:"response"`
			OutputIndex  int             `json:"output_index"`
			ContentIndex int             `json:"content_index"`
			Item         json.RawMessage `json:"item"`
			Part         json.RawMessage `json:"part"`
			Delta        string          `json:"delta"`
			Text         *string         `json:"text"`
			Arguments    *string         `json:"arguments"`
		}
		if json.Unmarshal(data, &e) != nil {
			continue
		}
		if r := parseObject(e.Response); r != nil {
			last = r
			switch e.Type {
			case "response.completed", "response.incomplete", "response.failed":
				terminal = r
			}
			continue
		}
		i := e.OutputIndex
		switch e.Type {
		case "response.output_item.added", "response.output_item.done":
			var ok bool
			if items, ok = at(items, i); ok {
				if it := parseObject(e.Item); it != nil {
					items[i] = it
				}
			}
		case "response.content_part.added", "response.content_part.done":
			list, ok := at(parts[i], e.ContentIndex)
			if p := parseObject(e.Part); ok && p != nil {
				list[e.ContentIndex] = p
				parts[i] = list
			}
		case "response.output_text.delta", "response.output_text.done":
			list, ok := at(parts[i], e.ContentIndex)
			if !ok {
				continue
			}
			if list[e.ContentIndex] == nil {
				list[e.ContentIndex] = parseObject([]byte(`{"type":"output_text","annotations":[]}`))
			}
			parts[i] = list
			sb := grow(texts, [2]int{i, e.ContentIndex})
			if e.Text != nil {
				sb.Reset() // the whole text
			}
			sb.WriteString(cmp.Or(e.Delta, deref(e.Text)))
		case "response.reasoning_summary_text.delta":
			if summary[i] == nil {
				summary[i] = &strings.Builder{}
			}
			summary[i].WriteString(e.Delta)
		case "response.function_call_arguments.delta", "response.function_call_arguments.done":
			if args[i] == nil {
				args[i] = &strings.Builder{}
			}
			if e.Arguments != nil {
				args[i].Reset()
				args[i].WriteString(*e.Arguments)
			} else {
				args[i].WriteString(e.Delta)
			}
		}
	}
	switch {
	case terminal != nil && !nullMember(terminal, "output"):
		return marshalObject(shapeResponse(terminal))
	case terminal != nil:
		last = terminal
	case last == nil:
		return nil
	}
	output := make([]*object, 0, len(items))
	for i, it := range items {
		if it == nil {
			continue
		}
		for c, p := range parts[i] {
			if sb := texts[[2]int{i, c}]; sb != nil && p != nil {
				p.put("text", sb.String(), []string{"type", "text", "annotations", "logprobs"})
			}
		}
		switch stringMember(it, "type") {
		case "message":
			if ps := slices.DeleteFunc(parts[i], func(p *object) bool { return p == nil }); len(ps) > 0 && emptyMember(it, "content") {
				it.put("content", ps, nil)
			}
		case "reasoning":
			if sb := summary[i]; sb != nil && emptyMember(it, "summary") {
				it.put("summary", []map[string]string{{"type": "summary_text", "text": sb.String()}}, nil)
			}
		case "function_call":
			if sb := args[i]; sb != nil {
				it.put("arguments", sb.String(), nil)
			}
		}
		output = append(output, it)
	}
	if len(output) == 0 && terminal != nil {
		return marshalObject(shapeResponse(terminal)) // Ollama's own output: null, with nothing to build
	}
	last.put("output", output, nil)
	return marshalObject(shapeResponse(last))
}

// The member orders of Ollama's openai.ResponsesResponse and the types in it: the
// non-streamed answer is that struct, while the stream's Response is a map (members
// sorted).
var (
	responseMembers = []string{"id", "object", "created_at", "completed_at", "status", "incomplete_details", "model",
		"previous_response_id", "instructions", "output", "error", "tools", "tool_choice", "truncation",
		"parallel_tool_calls", "text", "top_p", "presence_penalty", "frequency_penalty", "top_logprobs", "temperature",
		"reasoning", "usage", "max_output_tokens", "max_tool_calls", "store", "background", "service_tier", "metadata",
		"safety_identifier", "prompt_cache_key"}
	responseItemMembers    = []string{"id", "type", "status", "role", "content", "call_id", "name", "arguments", "summary", "encrypted_content"}
	responseContentMembers = []string{"type", "text", "annotations", "logprobs"}
	responseToolMembers    = []string{"type", "name", "description", "strict", "parameters"}
	responseFormatMembers  = []string{"type", "name", "schema", "strict"}
	responseUsageMembers   = []string{"input_tokens", "output_tokens", "total_tokens", "input_tokens_details", "output_tokens_details"}
	summaryMembers         = []string{"type", "text"}
	reasoningMembers       = []string{"effort", "summary"}
)

// shapeResponse gives a Response the stream carried the form of the non-streamed answer
// (openai.ToResponse, written by Ollama's ResponsesWriter): members in the struct's
// order; an output item without the members its struct omits when empty (a call's empty
// arguments); the reasoning settings without their null members (the struct omits them);
// and a completed response that lists neither a message nor a function call gets the
// message ToResponse always makes, with an empty text (the stream makes none when the
// model said nothing). In a completed response a reasoning item and the function calls
// get the ids ToResponse gives them, made from the response's ("rs_<id>", "fc_<id>_<n>";
// the stream's are random). Members Ollama's struct does not have keep their place after
// those it has.
func shapeResponse(r *object) *object {
	r.reorder(responseMembers)
	id := stringMember(r, "id")
	if stringMember(r, "status") != "completed" {
		id = "" // a cut stream's items keep their ids: no answer of Ollama's has them
	}
	hasAnswer, calls := false, 0
	r.shapeList("output", func(it *object) {
		switch stringMember(it, "type") {
		case "message":
			hasAnswer = true
		case "function_call":
			hasAnswer = true
			if id != "" {
				it.put("id", fmt.Sprintf("fc_%s_%d", id, calls), nil)
			}
			calls++
		case "reasoning":
			if id != "" {
				it.put("id", "rs_"+id, nil)
			}
		}
		for _, k := range responseItemMembers[2:] {
			if v := string(bytes.TrimSpace(it.vals[k])); v == `""` || v == "null" || v == "[]" {
				it.del(k)
			}
		}
		it.reorder(responseItemMembers)
		it.shapeList("content", func(c *object) { c.reorder(responseContentMembers) })
		it.shapeList("summary", func(s *object) { s.reorder(summaryMembers) })
	})
	if !hasAnswer && stringMember(r, "status") == "completed" {
		var output []json.RawMessage
		_ = json.Unmarshal(r.vals["output"], &output)
		msg, _ := json.Marshal(struct {
			ID      string               `json:"id"`
			Type    string               `json:"type"`
			Status  string               `json:"status"`
			Role    string               `json:"role"`
			Content []responseOutputText `json:"content"`
		}{fmt.Sprintf("msg_%d", rand.IntN(999999)), "message", "completed", "assistant", []responseOutputText{outputText("")}})
		r.put("output", append(output, msg), responseMembers)
	}
	r.shapeList("tools", func(t *object) { t.reorder(responseToolMembers) })
	r.shapeMember("text", func(t *object) { t.shapeMember("format", func(f *object) { f.reorder(responseFormatMembers) }) })
	r.shapeMember("reasoning", func(s *object) {
		for _, k := range slices.Clone(s.keys) {
			if nullMember(s, k) {
				s.del(k)
			}
		}
		s.reorder(reasoningMembers)
	})
	r.shapeMember("usage", func(u *object) { u.reorder(responseUsageMembers) })
	return r
}

// responseOutputText is an output_text part of a Responses message item, as Ollama's
// ToResponse writes it (no annotations, no logprobs).
type responseOutputText struct {
	Type        string `json:"type"`
	Text        string `json:"text"`
	Annotations []any  `json:"annotations"`
	Logprobs    []any  `json:"logprobs"`
}

func outputText(s string) responseOutputText {
	return responseOutputText{Type: "output_text", Text: s, Annotations: []any{}, Logprobs: []any{}}
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
	// A block's text, thinking and (a tool call's) input JSON, joined at the end: joining
	// them delta by delta in the block would cost the square of the answer's length.
	texts, thinking, parts := map[int]*strings.Builder{}, map[int]*strings.Builder{}, map[int]*strings.Builder{}
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
				grow(texts, e.Index).WriteString(d.Text)
			case "thinking_delta":
				grow(thinking, e.Index).WriteString(d.Thinking)
			case "signature_delta":
				b.put("signature", d.Signature, anthropicBlockMembers)
			case "input_json_delta":
				grow(parts, e.Index).WriteString(d.PartialJSON)
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
	// Nil, not empty, when no block came: Ollama's non-streamed message
	// (anthropic.ToMessagesResponse) has "content":null then, an answer whose tokens were
	// all empty text.
	var content []*object
	for i, b := range blocks {
		if b == nil {
			continue
		}
		if sb := texts[i]; sb != nil {
			b.put("text", stringMember(b, "text")+sb.String(), anthropicBlockMembers)
		}
		if sb := thinking[i]; sb != nil {
			b.put("thinking", stringMember(b, "thinking")+sb.String(), anthropicBlockMembers)
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

// nullMember reports whether o's member k is absent or null.
func nullMember(o *object, k string) bool {
	v := bytes.TrimSpace(o.vals[k])
	return len(v) == 0 || string(v) == "null"
}

// emptyMember reports whether o's member k is absent, null or an empty array.
func emptyMember(o *object, k string) bool {
	if nullMember(o, k) {
		return true
	}
	var list []json.RawMessage
	return json.Unmarshal(o.vals[k], &list) == nil && len(list) == 0
}

// marshalObject is o's JSON, nil if it cannot be written.
func marshalObject(o *object) []byte {
	b, err := json.Marshal(o)
	if err != nil {
		return nil
	}
	return b
}

// grow is the builder of key k in m, made on first use.
func grow[K comparable](m map[K]*strings.Builder, k K) *strings.Builder {
	sb := m[k]
	if sb == nil {
		sb = &strings.Builder{}
		m[k] = sb
	}
	return sb
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
