package ollamatest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// The Anthropic Messages API (POST /v1/messages), as Ollama 0.17.4 serves it: its
// AnthropicMessagesMiddleware checks the request and turns it into a chat, and its
// AnthropicWriter turns the chat's answer into a message, or with "stream": true into
// named SSE events: message_start, content_block_start, content_block_delta per token,
// content_block_stop, message_delta and message_stop (Ollama sends no ping).

// antError is anthropic.ErrorResponse.
type antError struct {
	Type  string `json:"type"`
	Error struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	} `json:"error"`
	RequestID string `json:"request_id,omitempty"`
}

// newAntError is anthropic.NewError, with a request id derived from the error rather than
// random.
func newAntError(code int, msg string) antError {
	e := antError{Type: "error", RequestID: "req_" + hex24(strconv.Itoa(code), msg)}
	e.Error.Message = msg
	e.Error.Type = ollama.AnthropicErrorType(code)
	return e
}

// hex24 is 24 hex digits hashed from parts: the length of Ollama's random ids.
func hex24(parts ...string) string {
	return fmt.Sprintf("%016x%08x", hash64(parts...), uint32(hash64(append(parts, "+")...)))
}

// writeAnthropicError writes an error of the chat handler as Ollama's AnthropicWriter
// does (a json.Encoder, "application/json").
func writeAnthropicError(w http.ResponseWriter, code int, msg string) {
	writeEncoded(w, code, newAntError(code, msg), nil)
}

// writeAnthropicBadRequest writes a 400 of the Anthropic middleware itself (gin's
// AbortWithStatusJSON: charset, no newline).
func writeAnthropicBadRequest(w http.ResponseWriter, msg string) {
	writeJSON(w, http.StatusBadRequest, newAntError(http.StatusBadRequest, msg), nil)
}

type antParam struct {
	Role    string `json:"role"`
	Content any    `json:"content"`
}

// antRequest is the part of anthropic.MessagesRequest the fake reads.
type antRequest struct {
	Model     string     `json:"model"`
	MaxTokens int        `json:"max_tokens"`
	Messages  []antParam `json:"messages"`
	System    any        `json:"system,omitempty"`
	Stream    bool       `json:"stream,omitempty"`
	Tools     []struct {
		Name        string          `json:"name"`
		Description string          `json:"description,omitempty"`
		InputSchema json.RawMessage `json:"input_schema,omitempty"`
	} `json:"tools,omitempty"`
}

// messages turns the request into its chat as anthropic.FromMessagesRequest does (text,
// tool results; images, tool uses and thinking add no text), with its errors.
func (req *antRequest) messages() ([]chatMsg, error) {
	var msgs []chatMsg
	switch sys := req.System.(type) {
	case string:
		if sys != "" {
			msgs = append(msgs, chatMsg{"system", sys})
		}
	case []any:
		var b strings.Builder
		for _, block := range sys {
			if bm, ok := block.(map[string]any); ok && bm["type"] == "text" {
				if t, ok := bm["text"].(string); ok {
					b.WriteString(t)
				}
			}
		}
		if b.Len() > 0 {
			msgs = append(msgs, chatMsg{"system", b.String()})
		}
	}
	for _, p := range req.Messages {
		role := strings.ToLower(p.Role)
		switch content := p.Content.(type) {
		case string:
			msgs = append(msgs, chatMsg{role, content})
		case []any:
			var text strings.Builder
			other := false // a block that makes a message without text
			var results []chatMsg
			for _, block := range content {
				bm, ok := block.(map[string]any)
				if !ok {
					return nil, errors.New("invalid content block format")
				}
				switch bm["type"] {
				case "text":
					if t, ok := bm["text"].(string); ok {
						text.WriteString(t)
					}
				case "image", "tool_use", "server_tool_use":
					other = true
				case "thinking":
					if t, ok := bm["thinking"].(string); ok && t != "" {
						other = true
					}
				case "tool_result", "web_search_tool_result":
					results = append(results, chatMsg{"tool", blockText(bm["content"])})
				}
			}
			if text.Len() > 0 || other {
				msgs = append(msgs, chatMsg{role, text.String()})
			}
			msgs = append(msgs, results...)
		default:
			return nil, fmt.Errorf("invalid message content type: %T", content)
		}
	}
	return msgs, nil
}

// blockText is the text of a tool result's content: a string or its text blocks.
func blockText(content any) string {
	switch c := content.(type) {
	case string:
		return c
	case []any:
		var b strings.Builder
		for _, cb := range c {
			if m, ok := cb.(map[string]any); ok && m["type"] == "text" {
				if t, ok := m["text"].(string); ok {
					b.WriteString(t)
				}
			}
		}
		return b.String()
	}
	return ""
}

// estimateInputTokens is anthropic.EstimateInputTokens (a quarter of the characters), the
// input_tokens of message_start, sent before the chat's prompt is counted.
func (req *antRequest) estimateInputTokens() int {
	n := 0
	if req.System != nil {
		n += countAnyContent(req.System)
	}
	for _, m := range req.Messages {
		n += len(m.Role) + countAnyContent(m.Content)
	}
	for _, t := range req.Tools {
		n += len(t.Name) + len(t.Description) + len(t.InputSchema)
	}
	tokens := n / 4
	if tokens == 0 && (len(req.Messages) > 0 || req.System != nil) {
		tokens = 1
	}
	return tokens
}

func countAnyContent(content any) int {
	switch c := content.(type) {
	case nil:
		return 0
	case string:
		return len(c)
	case []any:
		total := 0
		for _, block := range c {
			total += countContentBlock(block)
		}
		return total
	default:
		if b, err := json.Marshal(c); err == nil {
			return len(b)
		}
		return 0
	}
}

func countContentBlock(block any) int {
	bm, ok := block.(map[string]any)
	if !ok {
		if s, ok := block.(string); ok {
			return len(s)
		}
		return 0
	}
	total := 0
	if t, ok := bm["text"].(string); ok {
		total += len(t)
	}
	if t, ok := bm["thinking"].(string); ok {
		total += len(t)
	}
	if typ, _ := bm["type"].(string); typ == "tool_use" || typ == "tool_result" {
		if b, err := json.Marshal(bm); err == nil {
			total += len(b)
		}
	}
	return total
}

type antBlock struct {
	Type string  `json:"type"`
	Text *string `json:"text,omitempty"`
}

type antUsage struct {
	InputTokens  int `json:"input_tokens"`
	OutputTokens int `json:"output_tokens"`
}

// antMessage is anthropic.MessagesResponse.
type antMessage struct {
	ID           string     `json:"id"`
	Type         string     `json:"type"`
	Role         string     `json:"role"`
	Model        string     `json:"model"`
	Content      []antBlock `json:"content"`
	StopReason   string     `json:"stop_reason,omitempty"`
	StopSequence string     `json:"stop_sequence,omitempty"`
	Usage        antUsage   `json:"usage"`
}

type antMessageStart struct {
	Type    string     `json:"type"`
	Message antMessage `json:"message"`
}

type antBlockStart struct {
	Type         string   `json:"type"`
	Index        int      `json:"index"`
	ContentBlock antBlock `json:"content_block"`
}

type antBlockDelta struct {
	Type  string `json:"type"`
	Index int    `json:"index"`
	Delta struct {
		Type string `json:"type"`
		Text string `json:"text,omitempty"`
	} `json:"delta"`
}

type antBlockStop struct {
	Type  string `json:"type"`
	Index int    `json:"index"`
}

type antMessageDelta struct {
	Type  string `json:"type"`
	Delta struct {
		StopReason   string `json:"stop_reason,omitempty"`
		StopSequence string `json:"stop_sequence,omitempty"`
	} `json:"delta"`
	Usage antUsage `json:"usage"`
}

type antMessageStop struct {
	Type string `json:"type"`
}

func (s *Server) handleMessages(w http.ResponseWriter, r *http.Request, body []byte, f *Failure) {
	var req antRequest
	if err := decodeBody(body, &req); err != nil {
		writeAnthropicBadRequest(w, renameTypeError(err, "antRequest", "MessagesRequest", "antParam", "MessageParam"))
		return
	}
	switch {
	case req.Model == "":
		writeAnthropicBadRequest(w, "model is required")
		return
	case req.MaxTokens <= 0:
		writeAnthropicBadRequest(w, "max_tokens is required and must be positive")
		return
	case len(req.Messages) == 0:
		writeAnthropicBadRequest(w, "messages is required")
		return
	}
	msgs, err := req.messages()
	if err != nil {
		writeAnthropicBadRequest(w, err.Error())
		return
	}
	if req.Stream {
		streamHeaders(w)
	}
	m, ok := s.chatModel(w, req.Model, writeAnthropicError)
	if !ok {
		return
	}
	defer s.enter(false)()
	prompt := chatPrompt(msgs)
	id := "msg_" + hex24(m.Name, prompt)

	// As Ollama maps the chat's done_reason: the fake's "stop" is end_turn, and a chat
	// without messages, which only loads the model, ends with its "load": stop_sequence.
	var toks []string
	stop := "end_turn"
	if len(msgs) == 0 {
		stop = "stop_sequence"
		if _, err := s.ensureLoaded(r.Context(), m.Name); err != nil {
			return
		}
	} else {
		if _, ok := s.prepareWith(w, r, m, writeAnthropicError); !ok {
			return
		}
		toks = Reply(m.Name, prompt, s.capTokens(req.MaxTokens))
	}
	usage := antUsage{OutputTokens: len(toks)}
	if len(msgs) > 0 {
		usage.InputTokens = len(strings.Fields(prompt))
	}

	if !req.Stream {
		if s.generate(r.Context(), toks, nil) != nil {
			return
		}
		resp := antMessage{ID: id, Type: "message", Role: "assistant", Model: req.Model, StopReason: stop, Usage: usage}
		if len(toks) > 0 {
			text := join(toks)
			resp.Content = []antBlock{{Type: "text", Text: &text}}
		}
		writeEncoded(w, http.StatusOK, resp, f)
		return
	}

	sw := newStreamWriter(w, f, true)
	started := false
	start := func() error {
		started = true
		return sw.event("message_start", antMessageStart{Type: "message_start", Message: antMessage{
			ID: id, Type: "message", Role: "assistant", Model: req.Model, Content: []antBlock{},
			Usage: antUsage{InputTokens: req.estimateInputTokens()},
		}})
	}
	err = s.generate(r.Context(), toks, func(tok string) error {
		if !started {
			if err := start(); err != nil {
				return err
			}
			empty := ""
			if err := sw.event("content_block_start", antBlockStart{Type: "content_block_start", ContentBlock: antBlock{Type: "text", Text: &empty}}); err != nil {
				return err
			}
		}
		d := antBlockDelta{Type: "content_block_delta"}
		d.Delta.Type, d.Delta.Text = "text_delta", tok
		return sw.event("content_block_delta", d)
	})
	// Ollama's AnthropicWriter drops an error its chat sends mid-stream: StreamError, as
	// StreamNoDone, only leaves the closing events out.
	if err != nil || sw.noDone() {
		return
	}
	if !started {
		if start() != nil {
			return
		}
	} else if sw.event("content_block_stop", antBlockStop{Type: "content_block_stop"}) != nil {
		return
	}
	md := antMessageDelta{Type: "message_delta", Usage: usage}
	md.Delta.StopReason = stop
	if sw.event("message_delta", md) != nil {
		return
	}
	_ = sw.event("message_stop", antMessageStop{Type: "message_stop"})
}
