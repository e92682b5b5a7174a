package ollama_test

import (
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

func TestFramingOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		ctype string
		want  ollama.Framing
	}{
		{"application/x-ndjson", ollama.NDJSON},
		{"Application/X-NDJSON; charset=utf-8", ollama.NDJSON},
		{"text/event-stream", ollama.SSE},
		{"text/event-stream; charset=utf-8", ollama.SSE},
		{"text/event-stream; x", ollama.SSE}, // a bad parameter: the media type still counts
		{"application/json; charset=utf-8", ollama.NotStreamed},
		{"application/ndjson", ollama.NotStreamed},
		{"text/plain", ollama.NotStreamed},
		{"", ollama.NotStreamed},
		{"not a type", ollama.NotStreamed},
	}
	for _, tt := range tests {
		if got := ollama.FramingOf(tt.ctype); got != tt.want {
			t.Errorf("FramingOf(%q) = %v, want %v", tt.ctype, got, tt.want)
		}
		if got := ollama.FramingOf(tt.ctype).Streamed(); got != (tt.want != ollama.NotStreamed) {
			t.Errorf("FramingOf(%q).Streamed() = %v", tt.ctype, got)
		}
	}
}
