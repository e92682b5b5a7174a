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
