package gateway

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// The target's error frame ends the stream the client reads once, whatever ends its
// lines: the relay adds no error of its own after one that began where an event (a
// line) begins, read by the event stream rules (lines end with LF, CRLF or CR), nor after
// one followed by what a client reads nothing in (a keep-alive comment, a blank line, the
// LF of a CRLF that came after its CR). After an event left unfinished, the target's
// error frame is no error the client reads: the relay's own follows it.
func TestSyncResponseTargetErrorOnceUnderAnyLineEnd(t *testing.T) {
	t.Parallel()
	const sseErr = `data: {"error":{"message":"boom"}}`
	for _, c := range []struct {
		name   string
		kind   broker.Kind
		ctype  string
		frames []string
		own    bool // the relay adds its own error
	}{
		{"CR events", broker.KindOpenAIChat, "text/event-stream", []string{"data: {}\r\r", sseErr + "\r\r"}, false},
		{"LF then CR", broker.KindOpenAIChat, "text/event-stream", []string{"data: {}\n\r", sseErr + "\n\r"}, false},
		{"CR then CRLF", broker.KindOpenAIChat, "text/event-stream", []string{"data: {}\r\r\n", sseErr + "\r\r\n"}, false},
		{"CRLF events", broker.KindOpenAIChat, "text/event-stream", []string{"data: {}\r\n\r\n", sseErr + "\r\n\r\n"}, false},
		{"a CRLF split", broker.KindOpenAIChat, "text/event-stream", []string{"data: {}\r\n\r", "\n" + sseErr + "\r\n\r", "\n"}, false},
		{"a keep-alive after it", broker.KindOpenAIChat, "text/event-stream", []string{"data: {}\n\n", sseErr + "\n\n", ": ping\n\n"}, false},
		{"a blank line after it", broker.KindOpenAIChat, "text/event-stream", []string{"data: {}\n\n", sseErr + "\n\n", "\n"}, false},
		{"an NDJSON blank line after it", broker.KindChat, "application/x-ndjson", []string{"{}\n", `{"error":"boom"}` + "\n", "\r\n"}, false},
		{"after an unfinished event", broker.KindOpenAIChat, "text/event-stream", []string{"data: {}\r", sseErr + "\n\n"}, true},
		{"after a piece of a frame", broker.KindOpenAIChat, "text/event-stream", []string{"data: {}\n\n", sseErr + "\n\n", "data: {\"x\":", "1}\n\n"}, true},
	} {
		msgs := []*nats.Msg{streamMsg(1, c.frames[0], broker.HeaderContentType, c.ctype)}
		for i, f := range c.frames[1:] {
			msgs = append(msgs, streamMsg(i+2, f))
		}
		msgs = append(msgs, finalMsg(len(c.frames)+1, "failed", broker.HeaderError, "boom"))
		o, w := runSyncCase(t, syncCase{kind: c.kind, stream: true, msgs: msgs})
		sent := strings.Join(c.frames, "")
		body := w.Body.String()
		if o != outcomeError || w.Code != 200 || !strings.HasPrefix(body, sent) {
			t.Errorf("%s: outcome %d, %d %q; want the frames %q first", c.name, o, w.Code, body, sent)
			continue
		}
		if added := body[len(sent):]; (added != "") != c.own {
			t.Errorf("%s: the relay added %q after the target's error frame; want an error of its own: %v", c.name, added, c.own)
		}
	}
}
