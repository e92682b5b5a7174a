package ollamatest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// The OpenAI Responses API (POST /v1/responses), as Ollama 0.17.4 serves it: its
// ResponsesMiddleware turns the request into a chat, and its ResponsesWriter turns the
// chat's answer into a response object, or with "stream": true into named SSE events
// (response.created, response.in_progress, response.output_item.added,
// response.content_part.added, response.output_text.delta per token, then
// response.output_text.done, response.content_part.done, response.output_item.done and
// response.completed), each with its sequence_number.

// chatMsg is one message of the chat a compatibility route turns its request into.
type chatMsg struct{ role, content string }

// chatPrompt is the prompt the fake replies to: the chat's messages as /api/chat reads
// them, so a request on /v1/responses or /v1/messages gets the reply the same chat gets
// on /api/chat.
func chatPrompt(msgs []chatMsg) string {
	var b strings.Builder
	for _, m := range msgs {
		b.WriteString(m.role + ": " + m.content + "\n")
	}
	return b.String()
}

// decodeBody decodes body as gin's ShouldBindJSON does (one json.Decoder value: "EOF" for
// an empty body, "unexpected EOF" for a cut one, trailing bytes ignored).
func decodeBody(body []byte, v any) error {
	return json.NewDecoder(bytes.NewReader(body)).Decode(v)
}

// statusWriter is how a route answers an injected FailStatus: in the shape Ollama's
// middleware gives an error of its handler on the OpenAI and Anthropic routes, Ollama's
// {"error": msg} on its own.
func statusWriter(path string) func(http.ResponseWriter, int, string) {
	switch path {
	case "/v1/responses", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
		"/v1/images/generations", "/v1/images/edits":
		// Ollama's OpenAI middlewares rewrite their handler's error into OpenAI's shape
		// (v0.17.4 middleware BaseWriter.writeError: openai.NewError(500, ...), the status
		// kept), so an injected status is written so too.
		return writeResponsesError
	case "/v1/messages":
		return writeAnthropicError
	}
	return writeError
}

// streamHeaders are the headers Ollama's Responses and Anthropic middlewares set on a
// streamed request before its chat runs, so its chat errors carry them too.
func streamHeaders(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("Connection", "keep-alive")
}

// streamedCompat reports whether body asks /v1/responses or /v1/messages for a stream,
// as their middleware reads it: the call whose chat errors carry streamHeaders. That
// reads the first JSON value, as gin binds it (what follows is ignored), into the
// route's type: a bool on /v1/messages, which a later "stream":null leaves as it was, a
// *bool on /v1/responses, which it clears.
func streamedCompat(path string, body []byte) bool {
	switch path {
	case "/v1/messages":
		var req struct {
			Stream bool `json:"stream"`
		}
		return decodeBody(body, &req) == nil && req.Stream
	case "/v1/responses":
		var req struct {
			Stream *bool `json:"stream"`
		}
		return decodeBody(body, &req) == nil && req.Stream != nil && *req.Stream
	}
	return false
}

// chatModel resolves the model of a compatibility route as Ollama's chat handler does,
// with its messages, written by errw in the route's error shape.
func (s *Server) chatModel(w http.ResponseWriter, name string, errw func(http.ResponseWriter, int, string)) (Model, bool) {
	if strings.TrimSpace(name) == "" {
		errw(w, http.StatusBadRequest, "model is required")
		return Model{}, false
	}
	m, ok := s.findModel(s.resolveAlias(name))
	switch {
	case !ok:
		errw(w, http.StatusNotFound, fmt.Sprintf("model '%s' not found", name))
	case m.Embedding, m.Image: // no "completion": the chat handler refuses it
		errw(w, http.StatusBadRequest, fmt.Sprintf("%q does not support chat", name))
	default:
		return m, true
	}
	return Model{}, false
}

// renameTypeError gives a decoding error the Go type names of Ollama's request structs.
func renameTypeError(err error, names ...string) string {
	msg := err.Error()
	for i := 0; i+1 < len(names); i += 2 {
		msg = strings.ReplaceAll(msg, "Go struct field "+names[i]+".", "Go struct field "+names[i+1]+".")
	}
	return msg
}

// oaiErrorBody is openai.ErrorResponse: members in Ollama's order.
type oaiErrorBody struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   any     `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func newOAIError(typ, msg string) oaiErrorBody {
	var e oaiErrorBody
	e.Error.Message, e.Error.Type = msg, typ
	return e
}

// writeResponsesError writes an error of the chat handler as Ollama's ResponsesWriter
// does: the OpenAI shape, whatever the status typed "api_error", with a json.Encoder.
func writeResponsesError(w http.ResponseWriter, code int, msg string) {
	writeEncoded(w, code, newOAIError("api_error", msg), nil)
}

// writeResponsesBadRequest writes a 400 of the Responses middleware itself (gin's
// AbortWithStatusJSON: charset, no newline).
func writeResponsesBadRequest(w http.ResponseWriter, msg string) {
	writeJSON(w, http.StatusBadRequest, newOAIError("invalid_request_error", msg), nil)
}

type rspTextFormat struct {
	Type   string          `json:"type"`
	Name   string          `json:"name,omitempty"`
	Schema json.RawMessage `json:"schema,omitempty"`
	Strict *bool           `json:"strict,omitempty"`
}

type rspTool struct {
	Type        string         `json:"type"`
	Name        string         `json:"name"`
	Description *string        `json:"description"`
	Strict      *bool          `json:"strict"`
	Parameters  map[string]any `json:"parameters"`
}

// rspRequest is the part of openai.ResponsesRequest the fake reads.
type rspRequest struct {
	Model           string          `json:"model"`
	Background      bool            `json:"background"`
	Input           json.RawMessage `json:"input"`
	Instructions    string          `json:"instructions,omitempty"`
	MaxOutputTokens *int            `json:"max_output_tokens,omitempty"`
	Reasoning       struct {
		Effort  string `json:"effort,omitempty"`
		Summary string `json:"summary,omitempty"`
	} `json:"reasoning"`
	Temperature *float64 `json:"temperature"`
	Text        *struct {
		Format *rspTextFormat `json:"format,omitempty"`
	} `json:"text,omitempty"`
	TopP       *float64  `json:"top_p"`
	Truncation *string   `json:"truncation"`
	Tools      []rspTool `json:"tools,omitempty"`
	Stream     *bool     `json:"stream,omitempty"`
}

// messages turns the request into its chat as openai.FromResponsesRequest does, with its
// error messages for an input it cannot read.
func (req *rspRequest) messages() ([]chatMsg, error) {
	var msgs []chatMsg
	if req.Instructions != "" {
		msgs = append(msgs, chatMsg{"system", req.Instructions})
	}
	if len(req.Input) == 0 {
		return msgs, nil
	}
	var text string
	if json.Unmarshal(req.Input, &text) == nil {
		if text != "" {
			msgs = append(msgs, chatMsg{"user", text})
		}
		return msgs, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(req.Input, &items); err != nil {
		return nil, fmt.Errorf("input must be a string or array: %w", err)
	}
	for i, raw := range items {
		var item struct {
			Type    string          `json:"type"`
			Role    string          `json:"role"`
			Content json.RawMessage `json:"content"`
			Output  string          `json:"output"`
		}
		if err := json.Unmarshal(raw, &item); err != nil {
			return nil, fmt.Errorf("input[%d]: %w", i, err)
		}
		typ := item.Type
		if typ == "" && item.Role != "" {
			typ = "message"
		}
		switch typ {
		case "message":
			content, err := inputContent(item.Content)
			if err != nil {
				return nil, fmt.Errorf("input[%d]: %w", i, err)
			}
			msgs = append(msgs, chatMsg{item.Role, content})
		case "function_call_output":
			msgs = append(msgs, chatMsg{"tool", item.Output})
		case "function_call", "reasoning":
			// No text for the prompt.
		default:
			return nil, fmt.Errorf("input[%d]: unknown input item type: %s", i, item.Type)
		}
	}
	return msgs, nil
}

// inputContent is the text of a Responses input message: a string, or the input_text and
// output_text parts of an array.
func inputContent(raw json.RawMessage) (string, error) {
	if len(raw) == 0 {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var parts []json.RawMessage
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", fmt.Errorf("content must be a string or array: %w", err)
	}
	var b strings.Builder
	for i, p := range parts {
		var part struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		if err := json.Unmarshal(p, &part); err != nil {
			return "", fmt.Errorf("content[%d]: %w", i, err)
		}
		switch part.Type {
		case "input_text", "output_text":
			b.WriteString(part.Text)
		case "input_image":
		default:
			return "", fmt.Errorf("content[%d]: unknown content type: %s", i, part.Type)
		}
	}
	return b.String(), nil
}

type rspContent struct {
	Type        string `json:"type"`
	Text        string `json:"text"`
	Annotations []any  `json:"annotations"`
	Logprobs    []any  `json:"logprobs"`
}

type rspOutputItem struct {
	ID      string       `json:"id"`
	Type    string       `json:"type"`
	Status  string       `json:"status,omitempty"`
	Role    string       `json:"role,omitempty"`
	Content []rspContent `json:"content,omitempty"`
}

type rspUsage struct {
	InputTokens        int `json:"input_tokens"`
	OutputTokens       int `json:"output_tokens"`
	TotalTokens        int `json:"total_tokens"`
	InputTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	OutputTokensDetails struct {
		ReasoningTokens int `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
}

// rspResponse is openai.ResponsesResponse, the non-streamed answer: members in its order.
type rspResponse struct {
	ID                 string          `json:"id"`
	Object             string          `json:"object"`
	CreatedAt          int64           `json:"created_at"`
	CompletedAt        *int64          `json:"completed_at"`
	Status             string          `json:"status"`
	IncompleteDetails  any             `json:"incomplete_details"`
	Model              string          `json:"model"`
	PreviousResponseID *string         `json:"previous_response_id"`
	Instructions       *string         `json:"instructions"`
	Output             []rspOutputItem `json:"output"`
	Error              any             `json:"error"`
	Tools              []rspTool       `json:"tools"`
	ToolChoice         any             `json:"tool_choice"`
	Truncation         string          `json:"truncation"`
	ParallelToolCalls  bool            `json:"parallel_tool_calls"`
	Text               struct {
		Format rspTextFormat `json:"format"`
	} `json:"text"`
	TopP             float64 `json:"top_p"`
	PresencePenalty  float64 `json:"presence_penalty"`
	FrequencyPenalty float64 `json:"frequency_penalty"`
	TopLogprobs      int     `json:"top_logprobs"`
	Temperature      float64 `json:"temperature"`
	Reasoning        *struct {
		Effort  *string `json:"effort,omitempty"`
		Summary *string `json:"summary,omitempty"`
	} `json:"reasoning"`
	Usage            *rspUsage      `json:"usage"`
	MaxOutputTokens  *int           `json:"max_output_tokens"`
	MaxToolCalls     *int           `json:"max_tool_calls"`
	Store            bool           `json:"store"`
	Background       bool           `json:"background"`
	ServiceTier      string         `json:"service_tier"`
	Metadata         map[string]any `json:"metadata"`
	SafetyIdentifier *string        `json:"safety_identifier"`
	PromptCacheKey   *string        `json:"prompt_cache_key"`
}

func derefOr(p *float64, def float64) float64 {
	if p != nil {
		return *p
	}
	return def
}

func newRspUsage(in, out int) *rspUsage {
	return &rspUsage{InputTokens: in, OutputTokens: out, TotalTokens: in + out}
}

// response builds the non-streamed answer as openai.ToResponse does.
func (req *rspRequest) response(id, itemID string, created int64, text string, usage *rspUsage) rspResponse {
	r := rspResponse{
		ID: id, Object: "response", CreatedAt: created, CompletedAt: &created, Status: "completed",
		Model: req.Model, Tools: req.Tools, ToolChoice: "auto", Truncation: "disabled", ParallelToolCalls: true,
		TopP: derefOr(req.TopP, 1), Temperature: derefOr(req.Temperature, 1), Usage: usage,
		MaxOutputTokens: req.MaxOutputTokens, Background: req.Background, ServiceTier: "default", Metadata: map[string]any{},
		Output: []rspOutputItem{{ID: itemID, Type: "message", Status: "completed", Role: "assistant",
			Content: []rspContent{{Type: "output_text", Text: text, Annotations: []any{}, Logprobs: []any{}}}}},
	}
	if req.Instructions != "" {
		r.Instructions = &req.Instructions
	}
	if req.Truncation != nil {
		r.Truncation = *req.Truncation
	}
	if r.Tools == nil {
		r.Tools = []rspTool{}
	}
	r.Text.Format.Type = "text"
	if req.Text != nil && req.Text.Format != nil {
		r.Text.Format = *req.Text.Format
	}
	if rs := req.Reasoning; rs.Effort != "" || rs.Summary != "" {
		r.Reasoning = &struct {
			Effort  *string `json:"effort,omitempty"`
			Summary *string `json:"summary,omitempty"`
		}{}
		if rs.Effort != "" {
			r.Reasoning.Effort = &rs.Effort
		}
		if rs.Summary != "" {
			r.Reasoning.Summary = &rs.Summary
		}
	}
	return r
}

// streamObject builds the response object of the stream events as Ollama's
// ResponsesStreamConverter does: a map, so its members come sorted.
func (req *rspRequest) streamObject(id, status string, created int64, completed bool, output, usage any) map[string]any {
	var instructions any
	if req.Instructions != "" {
		instructions = req.Instructions
	}
	truncation := "disabled"
	if req.Truncation != nil {
		truncation = *req.Truncation
	}
	tools := []any{}
	for _, t := range req.Tools {
		tools = append(tools, map[string]any{"type": t.Type, "name": t.Name, "description": t.Description, "strict": t.Strict, "parameters": t.Parameters})
	}
	format := map[string]any{"type": "text"}
	if req.Text != nil && req.Text.Format != nil {
		tf := req.Text.Format
		format = map[string]any{"type": tf.Type}
		if tf.Name != "" {
			format["name"] = tf.Name
		}
		if tf.Schema != nil {
			format["schema"] = tf.Schema
		}
		if tf.Strict != nil {
			format["strict"] = *tf.Strict
		}
	}
	var reasoning any
	if rs := req.Reasoning; rs.Effort != "" || rs.Summary != "" {
		m := map[string]any{"effort": nil, "summary": nil}
		if rs.Effort != "" {
			m["effort"] = rs.Effort
		}
		if rs.Summary != "" {
			m["summary"] = rs.Summary
		}
		reasoning = m
	}
	var completedAt any
	if completed {
		completedAt = created
	}
	return map[string]any{
		"id": id, "object": "response", "created_at": created, "completed_at": completedAt,
		"status": status, "incomplete_details": nil, "model": req.Model, "previous_response_id": nil,
		"instructions": instructions, "output": output, "error": nil, "tools": tools,
		"tool_choice": "auto", "truncation": truncation, "parallel_tool_calls": true,
		"text": map[string]any{"format": format}, "top_p": derefOr(req.TopP, 1),
		"presence_penalty": 0, "frequency_penalty": 0, "top_logprobs": 0,
		"temperature": derefOr(req.Temperature, 1), "reasoning": reasoning, "usage": usage,
		"max_output_tokens": req.MaxOutputTokens, "max_tool_calls": nil, "store": false,
		"background": req.Background, "service_tier": "default", "metadata": map[string]any{},
		"safety_identifier": nil, "prompt_cache_key": nil,
	}
}

func streamUsage(in, out int) map[string]any {
	return map[string]any{
		"input_tokens": in, "output_tokens": out, "total_tokens": in + out,
		"input_tokens_details":  map[string]any{"cached_tokens": 0},
		"output_tokens_details": map[string]any{"reasoning_tokens": 0},
	}
}

func outputMessage(itemID, status string, content []any) map[string]any {
	return map[string]any{"id": itemID, "type": "message", "status": status, "role": "assistant", "content": content}
}

func outputText(text string) map[string]any {
	return map[string]any{"type": "output_text", "text": text, "annotations": []any{}, "logprobs": []any{}}
}

func (s *Server) handleResponses(w http.ResponseWriter, r *http.Request, body []byte, f *Failure) {
	var req rspRequest
	if err := decodeBody(body, &req); err != nil {
		writeResponsesBadRequest(w, renameTypeError(err, "rspRequest", "ResponsesRequest"))
		return
	}
	msgs, err := req.messages()
	if err != nil {
		writeResponsesBadRequest(w, err.Error())
		return
	}
	stream := req.Stream != nil && *req.Stream
	if stream {
		streamHeaders(w)
	}
	m, ok := s.chatModel(w, req.Model, writeResponsesError)
	if !ok {
		return
	}
	defer s.enter(false)()
	prompt := chatPrompt(msgs)
	id := fmt.Sprintf("resp_%d", hash64(m.Name, prompt, "resp")%999999)
	itemID := fmt.Sprintf("msg_%d", hash64(m.Name, prompt, "msg")%999999)
	now := s.cfg.Clock().Unix()

	var toks []string
	if len(msgs) == 0 {
		// A chat without messages only loads the model: an empty, finished answer.
		if _, err := s.ensureLoaded(r.Context(), m.Name); err != nil {
			return
		}
	} else {
		if _, ok := s.prepareWith(w, r, m, writeResponsesError); !ok {
			return
		}
		n := s.cfg.Tokens
		if req.MaxOutputTokens != nil && *req.MaxOutputTokens > 0 {
			n = *req.MaxOutputTokens
		}
		toks = Reply(m.Name, prompt, s.capTokens(n))
	}
	in, out := 0, len(toks)
	if len(msgs) > 0 {
		in = len(strings.Fields(prompt))
	}

	if !stream {
		if s.generate(r.Context(), toks, nil) != nil {
			return
		}
		writeEncoded(w, http.StatusOK, req.response(id, itemID, now, join(toks), newRspUsage(in, out)), f)
		return
	}

	sw := newStreamWriter(w, f, true)
	seq := 0
	ev := func(name string, data map[string]any) error {
		data["type"], data["sequence_number"] = name, seq
		seq++
		return sw.event(name, data)
	}
	opening := func() error {
		if err := ev("response.created", map[string]any{"response": req.streamObject(id, "in_progress", now, false, []any{}, nil)}); err != nil {
			return err
		}
		return ev("response.in_progress", map[string]any{"response": req.streamObject(id, "in_progress", now, false, []any{}, nil)})
	}
	var text strings.Builder
	started := false
	err = s.generate(r.Context(), toks, func(tok string) error {
		if !started {
			started = true
			if err := opening(); err != nil {
				return err
			}
			if err := ev("response.output_item.added", map[string]any{"output_index": 0, "item": outputMessage(itemID, "in_progress", []any{})}); err != nil {
				return err
			}
			if err := ev("response.content_part.added", map[string]any{"item_id": itemID, "output_index": 0, "content_index": 0, "part": outputText("")}); err != nil {
				return err
			}
		}
		text.WriteString(tok)
		return ev("response.output_text.delta", map[string]any{"item_id": itemID, "output_index": 0, "content_index": 0, "delta": tok, "logprobs": []any{}})
	})
	// Ollama's ResponsesWriter drops an error its chat sends mid-stream: StreamError, as
	// StreamNoDone, only leaves the closing events out.
	if err != nil || sw.noDone() {
		return
	}
	if len(toks) == 0 {
		if opening() != nil {
			return
		}
		_ = ev("response.completed", map[string]any{"response": req.streamObject(id, "completed", now, true, nil, streamUsage(in, out))})
		return
	}
	full := text.String()
	final := outputMessage(itemID, "completed", []any{outputText(full)})
	for _, e := range []struct {
		name string
		data map[string]any
	}{
		{"response.output_text.done", map[string]any{"item_id": itemID, "output_index": 0, "content_index": 0, "text": full, "logprobs": []any{}}},
		{"response.content_part.done", map[string]any{"item_id": itemID, "output_index": 0, "content_index": 0, "part": outputText(full)}},
		{"response.output_item.done", map[string]any{"output_index": 0, "item": final}},
		{"response.completed", map[string]any{"response": req.streamObject(id, "completed", now, true, []any{final}, streamUsage(in, out))}},
	} {
		if ev(e.name, e.data) != nil {
			return
		}
	}
}
