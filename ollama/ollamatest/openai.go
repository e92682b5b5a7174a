package ollamatest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// OpenAI-compatible shapes, as Ollama's openai middleware writes them.

type oaiUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type oaiMessage struct {
	Role    string `json:"role,omitempty"`
	Content string `json:"content"`
}

// oaiChoice is a choice of Ollama's shapes: a completion's (text, index, finish_reason:
// its CompleteChunkChoice), a chat's (index, message or delta, finish_reason).
type oaiChoice struct {
	Text         *string     `json:"text,omitempty"`
	Index        int         `json:"index"`
	Message      *oaiMessage `json:"message,omitempty"`
	Delta        *oaiMessage `json:"delta,omitempty"`
	FinishReason *string     `json:"finish_reason"`
}

type oaiResponse struct {
	ID                string      `json:"id"`
	Object            string      `json:"object"`
	Created           int64       `json:"created"`
	Model             string      `json:"model"`
	SystemFingerprint string      `json:"system_fingerprint"`
	Choices           []oaiChoice `json:"choices"`
	Usage             *oaiUsage   `json:"usage,omitempty"`
}

type oaiRequest struct {
	Model    string `json:"model"`
	Messages []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
	Prompt        json.RawMessage `json:"prompt"`
	Stream        bool            `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	MaxTokens *int `json:"max_tokens"`
}

// writeOAIError writes OpenAI's error shape, as Ollama's middleware does.
func writeOAIError(w http.ResponseWriter, code int, msg string) {
	typ := "api_error"
	if code < 500 {
		typ = "invalid_request_error"
	}
	writeOAIErrorTyped(w, code, typ, msg)
}

// writeOAIErrorTyped is writeOAIError with the error's type given.
func writeOAIErrorTyped(w http.ResponseWriter, code int, typ, msg string) {
	// In the members' order of Ollama's openai.Error.
	type oaiError struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   any     `json:"param"`
		Code    *string `json:"code"`
	}
	body := struct {
		Error oaiError `json:"error"`
	}{oaiError{Message: msg, Type: typ}}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

// oaiModel resolves the request model with OpenAI-shaped errors; capability is the
// handler's ("chat", "generate" for /v1/completions, embedding for embeddings).
func (s *Server) oaiModel(w http.ResponseWriter, name, capability string) (Model, bool) {
	completes := capability == "chat" || capability == "generate"
	lookup := name
	if completes {
		lookup = s.resolveAlias(name) // Ollama's chat and generate read aliases, its embed not
	}
	m, ok := s.findModel(lookup)
	// These are the handler's refusals, which Ollama's OpenAI layer passes on as an
	// api_error whatever their status; a name Ollama cannot parse is as in modelFor.
	unparsed := strings.TrimSpace(name) == "" || completes && !ollama.ValidModelName(name)
	switch {
	case unparsed && capability == "generate":
		writeOAIErrorTyped(w, http.StatusNotFound, "api_error", notFound(name, capability))
	case unparsed:
		writeOAIErrorTyped(w, http.StatusBadRequest, "api_error", "model is required")
	case !ok:
		writeOAIErrorTyped(w, http.StatusNotFound, "api_error", notFound(name, capability))
	case completes && m.Embedding:
		writeOAIErrorTyped(w, http.StatusBadRequest, "api_error", fmt.Sprintf("%q does not support %s", name, capability))
	default:
		return m, true
	}
	return Model{}, false
}

func (s *Server) handleOpenAIChat(w http.ResponseWriter, r *http.Request, body []byte, f *Failure) {
	s.openAIGenerate(w, r, body, f, true)
}

func (s *Server) handleOpenAICompletion(w http.ResponseWriter, r *http.Request, body []byte, f *Failure) {
	s.openAIGenerate(w, r, body, f, false)
}

func (s *Server) openAIGenerate(w http.ResponseWriter, r *http.Request, body []byte, f *Failure, chat bool) {
	var req oaiRequest
	var ok bool
	if err := decodeBody(body, &req); err != nil {
		writeOAIError(w, http.StatusBadRequest, err.Error())
		return
	}
	capability := "generate"
	var asks oaiChatAsks
	if chat {
		capability = "chat"
		if len(req.Messages) == 0 {
			// Ollama's ChatMiddleware, before its handler looks at the model.
			writeResponsesBadRequest(w, "[] is too short - 'messages'")
			return
		}
		if asks, ok = readOAIChatAsks(w, body); !ok {
			return
		}
	}
	// The handler's range check, on what the OpenAI layer passes on: the chat's
	// top_logprobs (an int), the completion's logprobs (an *int) when positive. A member
	// of another type is no concern of this check.
	var top int
	if chat {
		var lp struct {
			TopLogprobs int `json:"top_logprobs"`
		}
		if decodeBody(body, &lp) == nil {
			top = lp.TopLogprobs
		}
	} else {
		var lp struct {
			Logprobs *int `json:"logprobs"`
		}
		if decodeBody(body, &lp) == nil && lp.Logprobs != nil && *lp.Logprobs > 0 {
			top = *lp.Logprobs
		}
	}
	if !topLogprobsInRange(w, top, func(w http.ResponseWriter, code int, msg string) {
		writeOAIErrorTyped(w, code, "api_error", msg)
	}) {
		return
	}
	m, ok := s.oaiModel(w, req.Model, capability)
	if !ok {
		return
	}
	if chat && !capable(w, m, req.Model, asks.think, false, "tools", asks.tools && !m.Tools, oaiHandlerError) {
		return
	}
	defer s.enter(false)()
	if _, ok := s.prepare(w, r, m); !ok {
		return
	}
	var prompt strings.Builder
	for _, msg := range req.Messages {
		prompt.WriteString(msg.Role + ": " + string(msg.Content) + "\n")
	}
	prompt.Write(req.Prompt)
	n := s.cfg.Tokens
	if req.MaxTokens != nil && *req.MaxTokens > 0 {
		n = *req.MaxTokens
	}
	toks := Reply(m.Name, prompt.String(), s.capTokens(n))
	id, object := "chatcmpl-", "chat.completion"
	if !chat {
		id, object = "cmpl-", "text_completion"
	}
	id += fmt.Sprintf("%d", hash64(m.Name, prompt.String())%1000)
	base := oaiResponse{ID: id, Object: object, Created: s.cfg.Clock().Unix(), Model: req.Model, SystemFingerprint: "fp_ollama"}
	stop := "stop"
	choice := func(content string, final bool) oaiChoice {
		c := oaiChoice{}
		if final {
			c.FinishReason = &stop
		}
		switch {
		case !chat:
			c.Text = &content
		case req.Stream:
			c.Delta = &oaiMessage{Role: "assistant", Content: content}
		default:
			c.Message = &oaiMessage{Role: "assistant", Content: content}
		}
		return c
	}
	usage := &oaiUsage{PromptTokens: len(strings.Fields(prompt.String())), CompletionTokens: len(toks)}
	usage.TotalTokens = usage.PromptTokens + usage.CompletionTokens
	if !req.Stream {
		if s.generate(r.Context(), toks, nil) != nil {
			return
		}
		resp := base
		resp.Choices = []oaiChoice{choice(join(toks), true)}
		resp.Usage = usage
		writeEncoded(w, http.StatusOK, resp, f) // as Ollama's middleware: a json.Encoder
		return
	}
	includeUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	switch {
	case chat:
		base.Object = "chat.completion.chunk"
	case includeUsage:
		base.Usage = &oaiUsage{} // Ollama's completion chunks carry a zero usage until the last
	}
	sw := newStreamWriter(w, f, true)
	err := s.generate(r.Context(), toks, func(tok string) error {
		c := base
		c.Choices = []oaiChoice{choice(tok, false)}
		return sw.frame(c)
	})
	if err == nil {
		sw.streamErr(openAIStreamError)
	}
	if err != nil || sw.noDone() {
		return
	}
	c := base
	c.Choices = []oaiChoice{choice("", true)}
	if sw.frame(c) != nil {
		return
	}
	if includeUsage {
		// As Ollama: the last chunk again, with the usage and no choices.
		c.Usage, c.Choices = usage, []oaiChoice{}
		if sw.frame(c) != nil {
			return
		}
	}
	_ = sw.raw([]byte("[DONE]"))
}

func (s *Server) handleOpenAIEmbeddings(w http.ResponseWriter, r *http.Request, body []byte, f *Failure) {
	var req struct {
		Model          string          `json:"model"`
		Input          json.RawMessage `json:"input"`
		EncodingFormat string          `json:"encoding_format"`
	}
	if err := decodeBody(body, &req); err != nil {
		writeOAIError(w, http.StatusBadRequest, err.Error())
		return
	}
	// Ollama's EmbeddingsMiddleware checks encoding_format, then that there is an input
	// ("" is taken as [""]), before its handler reads the model.
	if f := req.EncodingFormat; f != "" && !strings.EqualFold(f, "float") && !strings.EqualFold(f, "base64") {
		writeResponsesBadRequest(w, fmt.Sprintf("Invalid value for 'encoding_format' = %s. Supported values: ['float', 'base64'].", f))
		return
	}
	if in := bytes.TrimSpace(req.Input); len(in) == 0 || bytes.Equal(in, []byte("null")) || emptyArray(in) {
		writeResponsesBadRequest(w, "invalid input")
		return
	}
	m, ok := s.oaiModel(w, req.Model, embedding)
	if !ok {
		return
	}
	defer s.enter(true)()
	inputs, ok := embedInputs(req.Input)
	if !ok {
		writeOAIErrorTyped(w, http.StatusBadRequest, "api_error", "invalid input type") // the handler's
		return
	}
	type datum struct {
		Object    string    `json:"object"`
		Embedding []float64 `json:"embedding"`
		Index     int       `json:"index"`
	}
	data := make([]datum, 0, len(inputs))
	for i, in := range inputs {
		data = append(data, datum{Object: "embedding", Embedding: Vector(m.Name, in), Index: i})
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "list", "data": data, "model": req.Model,
		"usage": map[string]int{"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
	}, f)
}

type oaiModelEntry struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

func (s *Server) oaiEntry(m Model) oaiModelEntry {
	return oaiModelEntry{ID: m.Name, Object: "model", Created: s.cfg.Clock().Unix(), OwnedBy: "library"}
}

func (s *Server) handleOpenAIModels(w http.ResponseWriter, _ *http.Request, _ []byte, f *Failure) {
	s.mu.Lock()
	data := make([]oaiModelEntry, 0, len(s.models))
	for _, m := range s.models {
		data = append(data, s.oaiEntry(m))
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data}, f)
}

func (s *Server) handleOpenAIModel(w http.ResponseWriter, r *http.Request, _ []byte, f *Failure) {
	name := r.PathValue("model")
	m, ok := s.findModel(name)
	if !ok {
		// Ollama's RetrieveMiddleware passes its show handler's 404 on as an api_error.
		writeOAIErrorTyped(w, http.StatusNotFound, "api_error", notFound(name, ""))
		return
	}
	writeJSON(w, http.StatusOK, s.oaiEntry(m), f)
}

// emptyArray reports whether raw is a JSON array without elements.
func emptyArray(raw []byte) bool {
	var list []json.RawMessage
	return json.Unmarshal(raw, &list) == nil && list != nil && len(list) == 0
}

// oaiChatAsks is what a /v1/chat/completions body asks of its model's capabilities as
// Ollama's OpenAI layer passes it to its chat handler (v0.17.4 openai.FromChatRequest):
// think is the handler's think (true for a reasoning effort of "high", "medium" or
// "low"), tools whether "tools" holds something.
type oaiChatAsks struct {
	think json.RawMessage
	tools bool
}

// readOAIChatAsks reads asks from body, refusing as Ollama's OpenAI layer does a
// reasoning value it does not know, before its handler looks at the model.
func readOAIChatAsks(w http.ResponseWriter, body []byte) (oaiChatAsks, bool) {
	var req struct {
		Reasoning *struct {
			Effort string `json:"effort"`
		} `json:"reasoning"`
		ReasoningEffort *string         `json:"reasoning_effort"`
		Tools           json.RawMessage `json:"tools"`
	}
	if err := decodeBody(body, &req); err != nil {
		writeOAIError(w, http.StatusBadRequest, err.Error())
		return oaiChatAsks{}, false
	}
	effort := ""
	if req.Reasoning != nil {
		effort = req.Reasoning.Effort
	} else if req.ReasoningEffort != nil {
		effort = *req.ReasoningEffort
	}
	var asks oaiChatAsks
	switch effort {
	case "", "none":
	case "high", "medium", "low":
		asks.think = json.RawMessage(`true`)
	default:
		writeResponsesBadRequest(w, fmt.Sprintf(`invalid reasoning value: '%s' (must be "high", "medium", "low", or "none")`, effort))
		return oaiChatAsks{}, false
	}
	asks.tools = holdsTools(req.Tools)
	return asks, true
}

// oaiHandlerError writes a refusal of Ollama's chat or generate handler as its OpenAI
// layer passes it on: an api_error, whatever its status.
func oaiHandlerError(w http.ResponseWriter, code int, msg string) {
	writeOAIErrorTyped(w, code, "api_error", msg)
}
