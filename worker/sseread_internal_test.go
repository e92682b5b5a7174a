package worker

import (
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
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
