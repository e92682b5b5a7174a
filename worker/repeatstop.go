package worker

import (
	"bytes"
	"encoding/json"
	"strings"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// repeatLimit is how many times in a row Ollama lets a token's text (spaces trimmed) come
// again after its first before it stops the generation (llm/server.go of v0.17.4,
// "token repeat limit reached"): the stream then just stops, without its end, and the
// non-streamed call answers 200 with the text so far, as a response that is not done.
// The run of the stream's last deltas tells such a stop from a stream cut otherwise: the
// first and then at least repeatLimit-1 more of the same text (a chunk held back by a
// parser may be missing from the 31 Ollama sends). A runner that failed after such a run
// is told from the stop only on the OpenAI routes, by the chunk without a model their
// writers make of its error line; the Messages and Responses writers write nothing for it.
const repeatLimit = 30

// repeatStopped reports whether the assembled SSE stream of events, which stopped before
// its end, is one Ollama stopped for a token repeated repeatLimit times. Its last
// repeatLimit deltas with text have the same text, spaces trimmed, and nothing else came
// among them or after them that a repeat stop does not send.
func repeatStopped(kind broker.Kind, events [][]byte) bool {
	data := sseData(events)
	switch kind {
	case broker.KindOpenAIChat, broker.KindOpenAICompletion:
		return chunksRepeatStopped(data)
	case broker.KindAnthropicMessages:
		return eventsRepeatStopped(data, messagesDeltaText)
	case broker.KindOpenAIResponses:
		if !eventsRepeatStopped(data, responsesDeltaText) {
			return false
		}
		// With a function call sent, Ollama's stream drops the text that follows while its
		// non-streamed answer may hold it: not an answer the stream can make. Only events
		// naming one are read for it.
		for _, d := range data {
			if !bytes.Contains(d, []byte(`"function_call"`)) {
				continue
			}
			var e struct {
				Item struct {
					Type string `json:"type"`
				} `json:"item"`
			}
			if json.Unmarshal(d, &e) == nil && e.Item.Type == "function_call" {
				return false
			}
		}
		return true
	}
	return false
}

// chunksRepeatStopped is repeatStopped of an OpenAI-compatible chat or completion: its
// last repeatLimit chunks with text have the same text and carry nothing else (a tool
// call, a finish reason, a second choice). Chunks without text (a role alone, one a
// parser emptied) do not count.
func chunksRepeatStopped(data [][]byte) bool {
	run, last := 0, ""
	for i := len(data) - 1; i >= 0 && run < repeatLimit; i-- {
		var c oaiChunk
		if json.Unmarshal(data[i], &c) != nil || len(c.Choices) != 1 {
			return false
		}
		if c.Model == "" {
			// Ollama's OpenAI writers decode a failed runner's error line as a response
			// and write it as a chunk without a model (nor text): a failure, not a stop.
			return false
		}
		ch := c.Choices[0]
		if ch.Index != 0 || ch.FinishReason != nil || len(ch.Delta.ToolCalls) > 0 {
			return false
		}
		text := ch.Text
		if ch.Delta.Content != nil {
			text = *ch.Delta.Content
		}
		text += ch.Delta.Reasoning
		if text == "" {
			continue
		}
		text = strings.TrimSpace(text)
		if run > 0 && text != last {
			return false
		}
		run, last = run+1, text
	}
	return run >= repeatLimit
}

// eventsRepeatStopped is repeatStopped of an Anthropic Messages or Responses stream: its
// last repeatLimit events are deltas with the same text. Ollama's converters send a delta
// only for a chunk with text, so every event of the run is one: a block that starts or
// stops, a tool call or an end among them is not a repeat stop. A runner that fails
// leaves no mark on these streams (the writers decode its error line as a chunk without
// text and write nothing for it), so one that failed right after such a run cannot be
// told from the stop.
func eventsRepeatStopped(data [][]byte, deltaText func([]byte) (string, bool)) bool {
	if len(data) < repeatLimit {
		return false
	}
	last := ""
	for i, d := range data[len(data)-repeatLimit:] {
		text, ok := deltaText(d)
		if !ok {
			return false
		}
		text = strings.TrimSpace(text)
		if i > 0 && text != last {
			return false
		}
		last = text
	}
	return true
}

// messagesDeltaText is the text of an Anthropic text or thinking delta event, false for
// any other event.
func messagesDeltaText(data []byte) (string, bool) {
	var e struct {
		Type  string `json:"type"`
		Delta struct {
			Type     string `json:"type"`
			Text     string `json:"text"`
			Thinking string `json:"thinking"`
		} `json:"delta"`
	}
	if json.Unmarshal(data, &e) != nil || e.Type != "content_block_delta" {
		return "", false
	}
	switch e.Delta.Type {
	case "text_delta":
		return e.Delta.Text, e.Delta.Text != ""
	case "thinking_delta":
		return e.Delta.Thinking, e.Delta.Thinking != ""
	}
	return "", false
}

// responsesDeltaText is the text of a Responses output text or reasoning summary delta
// event, false for any other event.
func responsesDeltaText(data []byte) (string, bool) {
	var e struct {
		Type  string `json:"type"`
		Delta string `json:"delta"`
	}
	if json.Unmarshal(data, &e) != nil {
		return "", false
	}
	switch e.Type {
	case "response.output_text.delta", "response.reasoning_summary_text.delta":
		return e.Delta, e.Delta != ""
	}
	return "", false
}

// zeroUsage is the usage Ollama's non-streamed OpenAI-compatible answer carries when its
// generation stopped without an end: the counts come with the end only.
var zeroUsage = json.RawMessage(`{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}`)

// repeatStoppedAnswer is Ollama's non-streamed answer to the request whose stream of
// events it stopped for a repeated token (repeatStopped), completed at now; tools: the
// request offers tools. Ollama's ChatHandler answers such a stop with its last chunk
// (Done false, no done reason, zero counts) holding the texts joined and the tool calls
// of every chunk (with tools offered; the last chunk's, none, without), and each route's
// writer converts it as it would a whole answer. Nil if no event parsed.
func repeatStoppedAnswer(kind broker.Kind, events [][]byte, tools bool, now time.Time) []byte {
	switch kind {
	case broker.KindAnthropicMessages:
		return messagesNotDone(events, tools)
	case broker.KindOpenAIResponses:
		return responsesNotDone(events, now)
	}
	return sseAnswer(kind, events, &notDone{tools: tools})
}

// anthropicBlock is Ollama's anthropic.ContentBlock, the members ToMessagesResponse sets.
type anthropicBlock struct {
	Type     string          `json:"type"`
	Text     *string         `json:"text,omitempty"`
	ID       string          `json:"id,omitempty"`
	Name     string          `json:"name,omitempty"`
	Input    json.RawMessage `json:"input,omitempty"`
	Thinking *string         `json:"thinking,omitempty"`
}

// messagesNotDone is anthropic.ToMessagesResponse of a chat response that is not done,
// made from its Messages stream: message_start's id and model; a thinking block with
// all the thinking, a text block with all the text, then (tools offered) the tool calls;
// no stop_reason but "tool_use" with a call; a usage of zeros (the counts come with the
// end). Nil without a message_start.
func messagesNotDone(frames [][]byte, tools bool) []byte {
	var msg *object
	var text, thinking strings.Builder
	var calls []*anthropicBlock
	inputs := map[int]*strings.Builder{} // a call's input JSON, by its block's index
	callAt := map[int]*anthropicBlock{}
	for _, data := range sseData(frames) {
		var e struct {
			Type         string          `json:"type"`
			Index        int             `json:"index"`
			Message      json.RawMessage `json:"message"`
			ContentBlock struct {
				Type string `json:"type"`
				ID   string `json:"id"`
				Name string `json:"name"`
			} `json:"content_block"`
			Delta struct {
				Type        string `json:"type"`
				Text        string `json:"text"`
				Thinking    string `json:"thinking"`
				PartialJSON string `json:"partial_json"`
			} `json:"delta"`
		}
		if json.Unmarshal(data, &e) != nil {
			continue
		}
		switch e.Type {
		case "message_start":
			msg = parseObject(e.Message)
		case "content_block_start":
			if e.ContentBlock.Type == "tool_use" {
				b := &anthropicBlock{Type: "tool_use", ID: e.ContentBlock.ID, Name: e.ContentBlock.Name, Input: json.RawMessage(`{}`)}
				calls = append(calls, b)
				callAt[e.Index] = b
			}
		case "content_block_delta":
			switch e.Delta.Type {
			case "text_delta":
				text.WriteString(e.Delta.Text)
			case "thinking_delta":
				thinking.WriteString(e.Delta.Thinking)
			case "input_json_delta":
				grow(inputs, e.Index).WriteString(e.Delta.PartialJSON)
			}
		}
	}
	if msg == nil {
		return nil
	}
	var content []*anthropicBlock
	if s := thinking.String(); s != "" {
		content = append(content, &anthropicBlock{Type: "thinking", Thinking: &s})
	}
	if s := text.String(); s != "" {
		content = append(content, &anthropicBlock{Type: "text", Text: &s})
	}
	stopReason := ""
	if tools && len(calls) > 0 {
		for i, b := range callAt {
			if in := inputs[i]; in != nil && json.Valid([]byte(in.String())) {
				b.Input = json.RawMessage(in.String())
			}
		}
		content = append(content, calls...)
		stopReason = "tool_use"
	}
	type usage struct {
		InputTokens  int `json:"input_tokens"`
		OutputTokens int `json:"output_tokens"`
	}
	out, err := json.Marshal(struct {
		ID         string            `json:"id"`
		Type       string            `json:"type"`
		Role       string            `json:"role"`
		Model      string            `json:"model"`
		Content    []*anthropicBlock `json:"content"`
		StopReason string            `json:"stop_reason,omitempty"`
		Usage      usage             `json:"usage"`
	}{stringMember(msg, "id"), stringMember(msg, "type"), stringMember(msg, "role"), stringMember(msg, "model"), content, stopReason, usage{}})
	if err != nil {
		return nil
	}
	return out
}

// responseNotDoneUsage is the usage openai.ToResponse gives a chat response without counts.
var responseNotDoneUsage = json.RawMessage(`{"input_tokens":0,"output_tokens":0,"total_tokens":0,"input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":0}}`)

// responsesNotDone is openai.ToResponse of a chat response that is not done, made from its
// Responses stream (which has no function call: repeatStopped), as Ollama's
// ResponsesWriter writes it at now: the stream's last Response (the request's settings,
// as ToResponse echoes them) "completed", created (its last chunk's time) and completed
// at now, with a usage of zeros and the output ToResponse makes: a reasoning item with
// all the reasoning, then the message with all the text (its id the stream's;
// shapeResponse makes one as Ollama does when no text came). Nil if no event carried a
// Response.
func responsesNotDone(frames [][]byte, now time.Time) []byte {
	var last *object
	var itemID string
	var text, thinking strings.Builder
	for _, data := range sseData(frames) {
		var e struct {
			Type     string          `json:"type"`
			Response json.RawMessage `json:"response"`
			Item     struct {
				ID   string `json:"id"`
				Type string `json:"type"`
			} `json:"item"`
			Delta string `json:"delta"`
		}
		if json.Unmarshal(data, &e) != nil {
			continue
		}
		if r := parseObject(e.Response); r != nil {
			last = r
			continue
		}
		switch e.Type {
		case "response.output_item.added":
			if e.Item.Type == "message" {
				itemID = e.Item.ID
			}
		case "response.output_text.delta":
			text.WriteString(e.Delta)
		case "response.reasoning_summary_text.delta":
			thinking.WriteString(e.Delta)
		}
	}
	if last == nil {
		return nil
	}
	type summary struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	type item struct {
		ID               string               `json:"id"`
		Type             string               `json:"type"`
		Status           string               `json:"status,omitempty"`
		Role             string               `json:"role,omitempty"`
		Content          []responseOutputText `json:"content,omitempty"`
		Summary          []summary            `json:"summary,omitempty"`
		EncryptedContent string               `json:"encrypted_content,omitempty"`
	}
	var output []item
	if s := thinking.String(); s != "" {
		// Its id is made from the response's by shapeResponse, as ToResponse makes it.
		output = append(output, item{Type: "reasoning", Summary: []summary{{"summary_text", s}}, EncryptedContent: s})
	}
	if itemID != "" {
		// Without one (no text came) shapeResponse adds the empty message ToResponse makes.
		output = append(output, item{ID: itemID, Type: "message", Status: "completed", Role: "assistant",
			Content: []responseOutputText{outputText(text.String())}})
	}
	last.put("status", "completed", responseMembers)
	// ToResponse's created_at is the last chunk's time, not the stream's start: now too.
	last.put("created_at", now.Unix(), responseMembers)
	last.put("completed_at", now.Unix(), responseMembers)
	last.put("output", output, responseMembers)
	last.put("usage", responseNotDoneUsage, responseMembers)
	return marshalObject(shapeResponse(last))
}
