package ollama_test

import (
	"slices"
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

// FrameError reads a stream's error frame in its framing: an NDJSON line, an SSE event's
// data (an OpenAI or Anthropic error). An SSE frame without a data line is no event a
// client reads, whatever it holds.
func TestFrameError(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		ctype, frame, want string
	}{
		{ollama.ContentTypeNDJSON, `{"error":"boom"}` + "\n", "boom"},
		{ollama.ContentTypeNDJSON, `{"message":{"content":"x"}}` + "\n", ""},
		{ollama.ContentTypeSSE, `data: {"error":{"message":"boom","type":"api_error"}}` + "\n\n", "boom"},
		{ollama.ContentTypeSSE, "event: error\ndata: " + `{"type":"error","error":{"type":"api_error","message":"boom"}}` + "\n\n", "boom"},
		{ollama.ContentTypeSSE, `{"error":{"message":"late"}}`, ""},
		{ollama.ContentTypeSSE, "event: error\n\n", ""},
		{"application/json", `{"error":"boom"}`, ""},
		// What no client reads as an error: not Ollama's error frames.
		{ollama.ContentTypeNDJSON, `{"error":{}}`, ""},
		{ollama.ContentTypeNDJSON, `{"error":5}`, ""},
		{ollama.ContentTypeSSE, `data: {"error":"boom"}` + "\n\n", ""},
		{ollama.ContentTypeSSE, `data: {"error":{"type":"x"}}` + "\n\n", ""},
		// Read by the event stream rules, as a client reads them: the space after the
		// colon is optional; a line that starts with a space is no data field; data lines
		// are joined by newlines; lines end with LF, CRLF or CR; the last event counts.
		{ollama.ContentTypeSSE, `data:{"error":{"message":"boom"}}` + "\n\n", "boom"},
		{ollama.ContentTypeSSE, ` data: {"error":{"message":"boom"}}` + "\n\n", ""},
		{ollama.ContentTypeSSE, `data: {"error":` + "\r\n" + `data: {"message":"boom"}}` + "\r\n\r\n", "boom"},
		{ollama.ContentTypeSSE, `data: {"error":{"message":"boom"}}` + "\r\r", "boom"},
		{ollama.ContentTypeSSE, `data: {"error":{"message":"boom"}}` + "\n\ndata: {}\n\n", ""},
		{ollama.ContentTypeSSE, "data: {}\n\n: a comment\n" + `data: {"error":{"message":"boom"}}`, "boom"},
		{ollama.ContentTypeSSE, `data: {"error":{"message":"boom"}}` + "\n\n: a comment\n\n", "boom"},
	} {
		if got := ollama.FrameError(c.ctype, []byte(c.frame)); got != c.want {
			t.Errorf("FrameError(%s, %q) = %q, want %q", c.ctype, c.frame, got, c.want)
		}
	}
}

// EventData yields each event's data by the event stream rules: joined data lines, the
// optional space, LF/CRLF/CR line ends, fields other than data and lines led by a space
// ignored, events with empty data skipped, an unfinished last event included.
func TestEventData(t *testing.T) {
	t.Parallel()
	in := "event: x\ndata: a\ndata:b\n\n" + ": comment\n\n" + " data: no\nid: 1\n\n" + "data\r\n\r\n" + "data: c\r\rdata:  d"
	var got []string
	for d := range ollama.EventData([]byte(in)) {
		got = append(got, string(d))
	}
	want := []string{"a\nb", "c", " d"}
	if !slices.Equal(got, want) {
		t.Fatalf("EventData = %q, want %q", got, want)
	}
}

// A frame holds something when a client reads anything in it; the stream's last frame
// is the last that does, whatever blank lines or keep-alive comments follow it.
func TestLastFrame(t *testing.T) {
	t.Parallel()
	sse := [][]byte{[]byte("data: a\n\n"), []byte("data: b\r\r"), []byte(": ping\n\n"), []byte("\n"), []byte("event: x\n\n"), []byte(" data: c\n\n")}
	if got := ollama.LastFrame(ollama.ContentTypeSSE, sse); string(got) != "data: b\r\r" {
		t.Errorf("SSE last frame %q", got)
	}
	nd := [][]byte{[]byte("{\"a\":1}\n"), []byte("{\"b\":2}\r\n"), []byte("\r\n"), []byte(" \t\n")}
	if got := ollama.LastFrame(ollama.ContentTypeNDJSON, nd); string(got) != "{\"b\":2}\r\n" {
		t.Errorf("NDJSON last frame %q", got)
	}
	if got := ollama.LastFrame(ollama.ContentTypeSSE, sse[2:]); got != nil {
		t.Errorf("no frame holds anything, got %q", got)
	}
	if !ollama.Holds("application/json", []byte(" ")) || ollama.Holds("application/json", nil) {
		t.Error("a frame of an answer not streamed holds what it has")
	}
}
