package ollama

import (
	"encoding/json"
	"fmt"
	"strings"
)

// StreamRequested reports whether a /api/chat or /api/generate body asks for a
// streamed reply. Like Ollama, a missing or null "stream" means true.
func StreamRequested(body []byte) (bool, error) {
	var v struct {
		Stream *bool `json:"stream"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return false, fmt.Errorf("decode stream field: %w", err)
	}
	return v.Stream == nil || *v.Stream, nil
}

// Streams reports whether a call to route path streams its answer, given the body's
// "stream" member (nil when absent or null): the native /api/chat and /api/generate
// stream unless told not to, as Ollama does; every other route (/v1, /api/embed) answers
// in one piece unless told to stream.
func Streams(path string, stream *bool) bool {
	switch path {
	case "/api/chat", "/api/generate":
		return stream == nil || *stream
	}
	return stream != nil && *stream
}

// StreamsBody is Streams with the "stream" member read from body; a body it cannot read
// gets the route's default.
func StreamsBody(path string, body []byte) bool {
	var v struct {
		Stream *bool `json:"stream"`
	}
	if json.Unmarshal(body, &v) != nil {
		v.Stream = nil
	}
	return Streams(path, v.Stream)
}

// ModelOf returns the "model" field of a request body (falling back to the
// legacy "name" field that old /api/show and /api/delete clients send).
func ModelOf(body []byte) (string, error) {
	var v struct {
		Model string `json:"model"`
		Name  string `json:"name"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return "", fmt.Errorf("decode model field: %w", err)
	}
	if v.Model == "" {
		return v.Name, nil
	}
	return v.Model, nil
}

// NormalizeModel returns the canonical form of a model name: trimmed,
// lower-cased, with ":latest" appended when the last path element has no tag.
// Ollama resolves names case-insensitively and defaults the tag to latest, so
// "Llama3" and "llama3:latest" are the same model.
func NormalizeModel(name string) string {
	n := strings.ToLower(strings.TrimSpace(name))
	if n == "" {
		return ""
	}
	last := n
	if i := strings.LastIndexByte(n, '/'); i >= 0 {
		last = n[i+1:]
	}
	if !strings.Contains(last, ":") {
		n += ":latest"
	}
	return n
}
