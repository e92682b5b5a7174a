package worker

import (
	"bytes"
	"cmp"
	"encoding/json"
	"slices"
	"strings"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// The OpenAI-compatible shapes below follow Ollama v0.17.4's openai package: the chunks
// (ChatCompletionChunk, CompletionChunk) a stream is made of, and the ChatCompletion and
// Completion a non-streamed request gets, which a streamed job's result must be.

type oaiToolCall struct {
	ID       string `json:"id"`
	Index    int    `json:"index"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type oaiLogprobs struct {
	Content []json.RawMessage `json:"content"`
}

type oaiChunk struct {
	ID                string           `json:"id"`
	Object            string           `json:"object"`
	Created           int64            `json:"created"`
	Model             string           `json:"model"`
	SystemFingerprint string           `json:"system_fingerprint"`
	Choices           []oaiChunkChoice `json:"choices"`
	Usage             json.RawMessage  `json:"usage"`
}

type oaiChunkChoice struct {
	Index int `json:"index"`
	Delta struct {
		Role      string        `json:"role"`
		Content   *string       `json:"content"`
		Reasoning string        `json:"reasoning"`
		ToolCalls []oaiToolCall `json:"tool_calls"`
	} `json:"delta"`
	Text         string       `json:"text"`
	FinishReason *string      `json:"finish_reason"`
	Logprobs     *oaiLogprobs `json:"logprobs"`
}

type oaiMessage struct {
	Role      string        `json:"role"`
	Content   string        `json:"content"`
	Reasoning string        `json:"reasoning,omitempty"`
	ToolCalls []oaiToolCall `json:"tool_calls,omitempty"`
}

type oaiChoice struct {
	Index        int          `json:"index"`
	Message      oaiMessage   `json:"message"`
	FinishReason *string      `json:"finish_reason"`
	Logprobs     *oaiLogprobs `json:"logprobs,omitempty"`
}

type oaiTextChoice struct {
	Text         string       `json:"text"`
	Index        int          `json:"index"`
	FinishReason *string      `json:"finish_reason"`
	Logprobs     *oaiLogprobs `json:"logprobs,omitempty"`
}

type oaiCompletion struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           int64           `json:"created"`
	Model             string          `json:"model"`
	SystemFingerprint string          `json:"system_fingerprint,omitempty"`
	Choices           any             `json:"choices"`
	Usage             json.RawMessage `json:"usage,omitempty"`
}

// choiceAcc gathers one choice's deltas.
type choiceAcc struct {
	index             int
	role              string
	content, thinking strings.Builder
	calls             []oaiToolCall
	finish            *string
	logprobs          []json.RawMessage
}

// sseResult builds, from the chunks of an OpenAI-compatible stream, the chat.completion
// (text_completion for KindOpenAICompletion) the same request without stream gets: the
// last chunk's id, created, model and fingerprint; per choice the text joined, tool calls
// merged, the last finish_reason and the logprobs joined; the usage if a chunk carried
// one (stream_options.include_usage). Nil if no chunk parsed.
func sseResult(kind broker.Kind, frames [][]byte) []byte { return sseAnswer(kind, frames, nil) }

// notDone is what sseAnswer needs of a stream Ollama stopped without its end (a token
// repeated): the answer is then openai.ToChatCompletion of a response that is not done.
type notDone struct {
	tools bool // the request offers tools: ChatHandler keeps every chunk's tool calls
}

// sseAnswer is sseResult, or with nd Ollama's answer to a generation stopped without its
// end: a usage of zeros unless a chunk carried one, and a chat's tool calls those
// ChatHandler keeps (all the chunks' with tools offered, else the last chunk's: none, as
// repeatStopped saw), their choice's finish_reason "tool_calls" as ToChatCompletion says.
func sseAnswer(kind broker.Kind, frames [][]byte, nd *notDone) []byte {
	var out oaiCompletion
	if nd != nil {
		out.Usage = zeroUsage
	}
	var choices []*choiceAcc
	seen := false
	for _, data := range sseData(frames) {
		var c oaiChunk
		if json.Unmarshal(data, &c) != nil {
			continue
		}
		seen = true
		out.ID = cmp.Or(c.ID, out.ID)
		out.Created = cmp.Or(c.Created, out.Created)
		out.Model = cmp.Or(c.Model, out.Model)
		out.SystemFingerprint = cmp.Or(c.SystemFingerprint, out.SystemFingerprint)
		if len(c.Usage) > 0 && string(c.Usage) != "null" {
			out.Usage = c.Usage
		}
		for _, ch := range c.Choices {
			choices = addDelta(choices, ch)
		}
	}
	if !seen {
		return nil
	}
	slices.SortStableFunc(choices, func(a, b *choiceAcc) int { return a.index - b.index })
	if kind == broker.KindOpenAICompletion {
		out.Object = "text_completion"
		cs := make([]oaiTextChoice, 0, len(choices))
		for _, a := range choices {
			cs = append(cs, oaiTextChoice{Text: a.content.String(), Index: a.index, FinishReason: a.finish, Logprobs: a.joinedLogprobs()})
		}
		out.Choices = cs
	} else {
		out.Object = "chat.completion"
		cs := make([]oaiChoice, 0, len(choices))
		for _, a := range choices {
			msg := oaiMessage{Role: cmp.Or(a.role, "assistant"), Content: a.content.String(), Reasoning: a.thinking.String(), ToolCalls: a.calls}
			finish := a.finish
			if nd != nil && !nd.tools {
				msg.ToolCalls = nil
			} else if nd != nil && len(msg.ToolCalls) > 0 {
				toolCalls := "tool_calls"
				finish = &toolCalls
			}
			cs = append(cs, oaiChoice{Index: a.index, Message: msg, FinishReason: finish, Logprobs: a.joinedLogprobs()})
		}
		out.Choices = cs
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil
	}
	return b
}

// addDelta adds one chunk choice to the choice of its index.
func addDelta(choices []*choiceAcc, ch oaiChunkChoice) []*choiceAcc {
	i := slices.IndexFunc(choices, func(a *choiceAcc) bool { return a.index == ch.Index })
	if i < 0 {
		choices = append(choices, &choiceAcc{index: ch.Index})
		i = len(choices) - 1
	}
	a := choices[i]
	if a.role == "" {
		a.role = ch.Delta.Role
	}
	if ch.Delta.Content != nil {
		a.content.WriteString(*ch.Delta.Content)
	}
	a.content.WriteString(ch.Text)
	a.thinking.WriteString(ch.Delta.Reasoning)
	for _, tc := range ch.Delta.ToolCalls {
		a.calls = mergeCall(a.calls, tc)
	}
	if ch.FinishReason != nil {
		a.finish = ch.FinishReason
	}
	if ch.Logprobs != nil {
		a.logprobs = append(a.logprobs, ch.Logprobs.Content...)
	}
	return choices
}

// mergeCall adds a tool call delta. OpenAI streams a call in pieces under one index (id,
// type and name first, then the arguments a piece at a time); Ollama sends each call
// whole, with its own id, most models' calls all at index 0. So a delta continues the
// last call of its index unless it names another id.
func mergeCall(calls []oaiToolCall, d oaiToolCall) []oaiToolCall {
	for i := len(calls) - 1; i >= 0; i-- {
		c := &calls[i]
		if c.Index != d.Index {
			continue
		}
		if d.ID != "" && c.ID != "" && d.ID != c.ID {
			break
		}
		c.ID = cmp.Or(c.ID, d.ID)
		c.Type = cmp.Or(c.Type, d.Type)
		c.Function.Name = cmp.Or(c.Function.Name, d.Function.Name)
		c.Function.Arguments += d.Function.Arguments
		return calls
	}
	return append(calls, d)
}

func (a *choiceAcc) joinedLogprobs() *oaiLogprobs {
	if len(a.logprobs) == 0 {
		return nil
	}
	return &oaiLogprobs{Content: a.logprobs}
}

// sseData returns the data payloads of the frames' events that are JSON (not "[DONE]").
func sseData(frames [][]byte) [][]byte {
	var out [][]byte
	for _, f := range frames {
		for data := range ollama.EventData(f) {
			if data = bytes.TrimSpace(data); json.Valid(data) {
				out = append(out, data)
			}
		}
	}
	return out
}

// sseJSON returns the last data payload of SSE frame f that is JSON, nil if none.
func sseJSON(f []byte) []byte {
	if data := sseData([][]byte{f}); len(data) > 0 {
		return data[len(data)-1]
	}
	return nil
}
