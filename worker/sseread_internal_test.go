package worker

import (
	"log/slog"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// An assembled SSE answer reads the target's events as a client would (ollama.EventData):
// the end marker and the chunks count whatever the space after "data:" or the line ends,
// an event's data lines are one payload, and a line led by a space is no field.
func TestSSEReadByTheEventStreamRules(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		event string
		ended bool
	}{
		{"data: [DONE]\n\n", true},
		{"data:[DONE]\r\n\r\n", true},
		{"data: [DONE]\r\r", true},
		{" data: [DONE]\n\n", false},
		{"data: {}\n\n", false},
	} {
		if got := sseEnded(broker.KindOpenAIChat, [][]byte{[]byte(c.event)}); got != c.ended {
			t.Errorf("sseEnded(%q) = %v, want %v", c.event, got, c.ended)
		}
	}
	frames := [][]byte{
		[]byte("data: {\"a\":\n" + "data: 1}\n\n"),
		[]byte(" data: {\"b\":2}\n\n"),
		[]byte(": comment\ndata:{\"c\":3}\r\n\r\n"),
	}
	got := sseData(frames)
	if len(got) != 2 || string(got[0]) != "{\"a\":\n1}" || string(got[1]) != `{"c":3}` {
		t.Fatalf("sseData = %q, want the joined event and the one without its space", got)
	}
}

// A stream's end and its error are read from its last frame that a client reads
// something in: blank lines, comments (a proxy's keep-alive) and the LF of a CRLF split
// from its CR (ollama's splitter begins the next frame with it) that come after the end
// event or the error do not hide it, as a client skips them.
func TestStreamEndReadPastWhatNoClientReads(t *testing.T) {
	t.Parallel()
	chat := []byte(`{"model":"tiny-a","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	chunk := "data: " + chatChunks("a")[0] + "\n\n"
	for _, trailer := range []string{"\n", ": keep-alive\n\n", "\r\n", "event: ping\n\n"} {
		frames := [][]byte{[]byte(chunk), []byte("data: [DONE]\r\n\r"), []byte(trailer)}
		if err := newTargetCall(broker.KindOpenAIChat, chat).cut(ollama.ContentTypeSSE, frames); err != nil {
			t.Errorf("a stream that ended, then %q: cut (%v)", trailer, err)
		}
		if !sseEnded(broker.KindOpenAIChat, frames) {
			t.Errorf("a stream that ended, then %q: sseEnded false", trailer)
		}
		msg := [][]byte{[]byte(chunk), []byte(`data: {"error":{"message":"boom"}}` + "\n\n"), []byte(trailer)}
		if got := streamError(ollama.ContentTypeSSE, msg); got != "boom" {
			t.Errorf("an SSE error event, then %q: streamError %q, want boom", trailer, got)
		}
	}
	for _, trailer := range []string{"\n", "\r\n", "  \n"} {
		frames := [][]byte{[]byte(`{"model":"tiny-a","response":"a","done":false}` + "\n"), []byte(`{"error":"boom"}` + "\n"), []byte(trailer)}
		if got := streamError(ollama.ContentTypeNDJSON, frames); got != "boom" {
			t.Errorf("an NDJSON error line, then %q: streamError %q, want boom", trailer, got)
		}
	}
	// The assembled answer of a stream that ended, a keep-alive after its end.
	a := &assembly{kind: broker.KindOpenAIChat, setCT: func(string) error { return nil }}
	var got []byte
	a.relay = func(b []byte) error { got = b; return nil }
	a.framing, a.outCT = assembledFraming(broker.KindOpenAIChat)
	a.check = answerCheck{contentType: func() string { return a.ct }, pass: a.take}
	if err := a.contentType(ollama.ContentTypeSSE); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{chunk, "data: [DONE]\n\n", ": keep-alive\n\n"} {
		if err := a.frame([]byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.end(ollama.ContentTypeSSE, nil, slog.New(slog.DiscardHandler)); err != nil || got == nil {
		t.Errorf("assembled: %v, answer %q", err, got)
	}
}
