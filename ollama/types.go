package ollama

import (
	"encoding/json"
	"time"
)

// Field order and omitempty choices follow Ollama v0.17 api/types.go so that
// re-encoding one of these values gives the same bytes Ollama would send.
// Fields whose shape is polymorphic (think: bool or "high"; keep_alive: "5m" or
// 300; format: "json" or a schema) or that foreman only relays are kept as
// json.RawMessage.

// ChatRequest is the body of POST /api/chat.
type ChatRequest struct {
	Model       string          `json:"model"`
	Messages    []Message       `json:"messages"`
	Stream      *bool           `json:"stream,omitempty"`
	Format      json.RawMessage `json:"format,omitempty"`
	KeepAlive   json.RawMessage `json:"keep_alive,omitempty"`
	Tools       json.RawMessage `json:"tools,omitempty"`
	Options     json.RawMessage `json:"options,omitempty"`
	Think       json.RawMessage `json:"think,omitempty"`
	Truncate    *bool           `json:"truncate,omitempty"`
	Shift       *bool           `json:"shift,omitempty"`
	Logprobs    bool            `json:"logprobs,omitempty"`
	TopLogprobs int             `json:"top_logprobs,omitempty"`
}

// Message is one chat message.
type Message struct {
	Role       string          `json:"role"`
	Content    string          `json:"content"`
	Thinking   string          `json:"thinking,omitempty"`
	Images     json.RawMessage `json:"images,omitempty"`
	ToolCalls  json.RawMessage `json:"tool_calls,omitempty"`
	ToolName   string          `json:"tool_name,omitempty"`
	ToolCallID string          `json:"tool_call_id,omitempty"`
}

// Metrics are the timing fields Ollama appends to a final response.
type Metrics struct {
	TotalDuration      time.Duration `json:"total_duration,omitempty"`
	LoadDuration       time.Duration `json:"load_duration,omitempty"`
	PromptEvalCount    int           `json:"prompt_eval_count,omitempty"`
	PromptEvalDuration time.Duration `json:"prompt_eval_duration,omitempty"`
	EvalCount          int           `json:"eval_count,omitempty"`
	EvalDuration       time.Duration `json:"eval_duration,omitempty"`
}

// ChatResponse is one frame of a /api/chat stream, or the whole non-streamed reply.
type ChatResponse struct {
	Model       string          `json:"model"`
	RemoteModel string          `json:"remote_model,omitempty"`
	RemoteHost  string          `json:"remote_host,omitempty"`
	CreatedAt   time.Time       `json:"created_at"`
	Message     Message         `json:"message"`
	Done        bool            `json:"done"`
	DoneReason  string          `json:"done_reason,omitempty"`
	Logprobs    json.RawMessage `json:"logprobs,omitempty"`
	Metrics
}

// GenerateRequest is the body of POST /api/generate.
type GenerateRequest struct {
	Model       string          `json:"model"`
	Prompt      string          `json:"prompt"`
	Suffix      string          `json:"suffix"`
	System      string          `json:"system"`
	Template    string          `json:"template"`
	Context     []int           `json:"context,omitempty"`
	Stream      *bool           `json:"stream,omitempty"`
	Raw         bool            `json:"raw,omitempty"`
	Format      json.RawMessage `json:"format,omitempty"`
	KeepAlive   json.RawMessage `json:"keep_alive,omitempty"`
	Images      json.RawMessage `json:"images,omitempty"`
	Options     json.RawMessage `json:"options,omitempty"`
	Think       json.RawMessage `json:"think,omitempty"`
	Truncate    *bool           `json:"truncate,omitempty"`
	Shift       *bool           `json:"shift,omitempty"`
	Logprobs    bool            `json:"logprobs,omitempty"`
	TopLogprobs int             `json:"top_logprobs,omitempty"`
}

// GenerateResponse is one frame of a /api/generate stream, or the whole reply.
type GenerateResponse struct {
	Model       string    `json:"model"`
	RemoteModel string    `json:"remote_model,omitempty"`
	RemoteHost  string    `json:"remote_host,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	Response    string    `json:"response"`
	Thinking    string    `json:"thinking,omitempty"`
	Done        bool      `json:"done"`
	DoneReason  string    `json:"done_reason,omitempty"`
	Context     []int     `json:"context,omitempty"`
	Metrics
	ToolCalls json.RawMessage `json:"tool_calls,omitempty"`
	Logprobs  json.RawMessage `json:"logprobs,omitempty"`
}

// EmbedRequest is the body of POST /api/embed. Input is a string or an array of strings.
type EmbedRequest struct {
	Model      string          `json:"model"`
	Input      json.RawMessage `json:"input"`
	KeepAlive  json.RawMessage `json:"keep_alive,omitempty"`
	Truncate   *bool           `json:"truncate,omitempty"`
	Dimensions int             `json:"dimensions,omitempty"`
	Options    json.RawMessage `json:"options,omitempty"`
}

// EmbedResponse is the reply of POST /api/embed.
type EmbedResponse struct {
	Model           string        `json:"model"`
	Embeddings      [][]float32   `json:"embeddings"`
	TotalDuration   time.Duration `json:"total_duration,omitempty"`
	LoadDuration    time.Duration `json:"load_duration,omitempty"`
	PromptEvalCount int           `json:"prompt_eval_count,omitempty"`
}

// EmbeddingRequest is the body of the legacy POST /api/embeddings.
type EmbeddingRequest struct {
	Model     string          `json:"model"`
	Prompt    string          `json:"prompt"`
	KeepAlive json.RawMessage `json:"keep_alive,omitempty"`
	Options   json.RawMessage `json:"options,omitempty"`
}

// EmbeddingResponse is the reply of the legacy POST /api/embeddings.
type EmbeddingResponse struct {
	Embedding []float64 `json:"embedding"`
}

// ModelDetails describes a model's format and size; shared by tags, ps and show.
type ModelDetails struct {
	ParentModel       string   `json:"parent_model"`
	Format            string   `json:"format"`
	Family            string   `json:"family"`
	Families          []string `json:"families"`
	ParameterSize     string   `json:"parameter_size"`
	QuantizationLevel string   `json:"quantization_level"`
}

// ListResponse is the reply of GET /api/tags.
type ListResponse struct {
	Models []ListModelResponse `json:"models"`
}

// ListModelResponse is one installed model in /api/tags.
type ListModelResponse struct {
	Name        string          `json:"name"`
	Model       string          `json:"model"`
	RemoteModel string          `json:"remote_model,omitempty"`
	RemoteHost  string          `json:"remote_host,omitempty"`
	ModifiedAt  time.Time       `json:"modified_at"`
	Size        int64           `json:"size"`
	Digest      string          `json:"digest"`
	Details     json.RawMessage `json:"details,omitempty"`
}

// ProcessResponse is the reply of GET /api/ps.
type ProcessResponse struct {
	Models []ProcessModelResponse `json:"models"`
}

// ProcessModelResponse is one loaded model in /api/ps.
type ProcessModelResponse struct {
	Name          string          `json:"name"`
	Model         string          `json:"model"`
	Size          int64           `json:"size"`
	Digest        string          `json:"digest"`
	Details       json.RawMessage `json:"details,omitempty"`
	ExpiresAt     time.Time       `json:"expires_at"`
	SizeVRAM      int64           `json:"size_vram"`
	ContextLength int             `json:"context_length"`
}

// UnmarshalJSON reads /api/tags entry by entry (modelList).
func (r *ListResponse) UnmarshalJSON(b []byte) error {
	models, err := modelList[ListModelResponse](b, func(n modelNames) ListModelResponse {
		return ListModelResponse{Name: n.Name, Model: n.Model}
	})
	r.Models = models
	return err
}

// UnmarshalJSON reads /api/ps entry by entry (modelList).
func (r *ProcessResponse) UnmarshalJSON(b []byte) error {
	models, err := modelList[ProcessModelResponse](b, func(n modelNames) ProcessModelResponse {
		return ProcessModelResponse{Name: n.Name, Model: n.Model}
	})
	r.Models = models
	return err
}

// modelNames are the members of a model list's entry that foreman reads it by.
type modelNames struct {
	Name  string `json:"name"`
	Model string `json:"model"`
}

// modelList decodes the "models" of /api/tags or /api/ps (b), each entry as Ollama's type
// has it, or, when one of its other members has another shape (a newer Ollama answering
// a size, a time or a count differently), by its names alone (named): the inventory reads
// the lists for their names, and a member it does not read must not make every poll fail
// (the target degraded for good, its lists frozen at the last poll before the upgrade).
// The body is relayed to clients as it came. A list that is not one, or an entry whose
// names are not strings, is still an error.
func modelList[T any](b []byte, named func(modelNames) T) ([]T, error) {
	var raw struct {
		Models []json.RawMessage `json:"models"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	if raw.Models == nil {
		return nil, nil
	}
	out := make([]T, 0, len(raw.Models))
	for _, e := range raw.Models {
		var m T
		if json.Unmarshal(e, &m) != nil {
			var n modelNames
			if err := json.Unmarshal(e, &n); err != nil {
				return nil, err
			}
			m = named(n)
		}
		out = append(out, m)
	}
	return out, nil
}

// ShowRequest is the body of POST /api/show. Old clients send Name instead of Model.
type ShowRequest struct {
	Model    string          `json:"model"`
	System   string          `json:"system"`
	Template string          `json:"template"`
	Verbose  bool            `json:"verbose"`
	Options  json.RawMessage `json:"options,omitempty"`
	Name     string          `json:"name"`
}

// VersionResponse is the reply of GET /api/version.
type VersionResponse struct {
	Version string `json:"version"`
}

// ErrorResponse is Ollama's error body, and foreman's.
type ErrorResponse struct {
	Error string `json:"error"`
}
