package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// wantErrorBody fails unless body is an error answer in the shape of path's API: Ollama's
// {"error":"..."} or, on /v1 routes, OpenAI's {"error":{"message":"...",...}}.
func wantErrorBody(t *testing.T, path string, status int, body []byte) {
	t.Helper()
	var e struct {
		Error json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Error) == 0 || string(e.Error) == "null" {
		t.Fatalf("%s: %d answer %q is not JSON with an \"error\" member", path, status, body)
	}
	var shaped bool
	if strings.HasPrefix(path, "/v1/") {
		var obj struct {
			Message *string `json:"message"`
		}
		shaped = json.Unmarshal(e.Error, &obj) == nil && obj.Message != nil
	} else {
		var msg string
		shaped = json.Unmarshal(e.Error, &msg) == nil
	}
	if !shaped {
		t.Fatalf("%s: %d answer %q is not an error in the route's API shape", path, status, body)
	}
}

// fuzzSyncMsgs turns fuzz data into the messages a relay reads: records separated by
// 0x00, each led by an op byte. Frames mostly carry the right Foreman-Seq so that the
// fuzzer gets past the gap check; other ops forge headers and state events.
func fuzzSyncMsgs(data []byte) (msgs []*nats.Msg, clean bool) {
	clean = true // only in-order frames and a done marker
	seq := 0
	sawFinal := false
	for _, rec := range bytes.Split(data, []byte{0}) {
		if len(rec) == 0 {
			continue
		}
		op, rest := rec[0], rec[1:]
		m := nats.NewMsg(broker.StreamSubject(syncTestID))
		switch op % 5 {
		case 0, 1: // an in-order frame; op 1 also names a Content-Type: "type\x01data"
			seq++
			m.Header.Set(broker.HeaderSeq, strconv.Itoa(seq))
			if op%5 == 1 {
				ct, d, _ := bytes.Cut(rest, []byte{1})
				m.Header.Set(broker.HeaderContentType, string(ct))
				rest = d
			}
			m.Data = rest
		case 2: // a final marker: "kind\x01error\x01status"
			seq++
			parts := bytes.SplitN(rest, []byte{1}, 3)
			m.Header.Set(broker.HeaderSeq, strconv.Itoa(seq))
			m.Header.Set(broker.HeaderFinal, string(parts[0]))
			if len(parts) > 1 {
				m.Header.Set(broker.HeaderError, string(parts[1]))
			}
			if len(parts) > 2 {
				m.Header.Set(broker.HeaderStatus, string(parts[2]))
			}
			if string(parts[0]) != "done" || sawFinal {
				clean = false
			}
			sawFinal = true
		case 3: // a frame with a forged Foreman-Seq
			clean = false
			m.Header.Set(broker.HeaderSeq, string(rest))
		case 4: // a state event with fuzzed JSON
			clean = false
			m = &nats.Msg{Subject: broker.StateSubject(syncTestID), Data: rest}
		}
		msgs = append(msgs, m)
	}
	// A relay ends only on a final marker or a terminal state: end every input with one.
	end, _ := json.Marshal(&broker.Job{ID: syncTestID, State: broker.StateFailed, Error: "end of fuzz input"})
	msgs = append(msgs, &nats.Msg{Subject: broker.StateSubject(syncTestID), Data: end})
	return msgs, clean && sawFinal
}

// FuzzSyncResponse feeds fuzzed stream messages (frames, final markers, state events, forged
// headers) to the relay that writes a queued job's answer. It always ends with a status
// the gateway may send; an error sent before any byte of the answer is a JSON error body;
// in-order frames closed by a done marker reach the client byte for byte.
// Run with: go test -run '^$' -fuzz '^FuzzSyncResponse$' -fuzztime 30s ./gateway
func FuzzSyncResponse(f *testing.F) {
	f.Add(uint8(0), true, []byte("\x01application/x-ndjson\x01{\"a\":1}\n\x00\x00{\"b\":2}\n\x00\x02done"))
	f.Add(uint8(2), true, []byte("\x01text/event-stream\x01data: {}\n\n\x00\x02failed\x01boom\x01500"))
	f.Add(uint8(2), false, []byte("\x02failed\x01{\"error\":{\"message\":\"bad\",\"type\":\"invalid_request_error\"}}\x01400"))
	f.Add(uint8(1), false, []byte("\x00{\"response\":\"x\"}\x00\x02canceled\x01by user"))
	f.Add(uint8(0), true, []byte("\x037\x00\x02done"))
	f.Add(uint8(3), false, []byte("\x04{\"job_id\":\"x\",\"state\":\"canceled\",\"error\":\"gone\"}"))
	f.Add(uint8(0), false, []byte("\x02failed\x01\x01999"))
	// The target's error frame relayed without its line's or event's end, then the job's
	// failure: the stream still ends with the whole error frame.
	f.Add(uint8(0), true, []byte("\x05{\"error\":\"boom\"}"))
	f.Add(uint8(2), true, []byte("\x01text/event-stream\x01data: {\"error\":{\"message\":\"boom\"}}"))
	// An error event whose data has no space after its colon, one on a line that starts
	// with a space (no field a client reads), one after an event left unfinished, and
	// one in two data lines: an SSE client reads the first and the last as errors, not
	// the two others.
	f.Add(uint8(2), true, []byte("\x01text/event-stream\x01data:{\"error\":{\"message\":\"m\"}}\n\n"))
	f.Add(uint8(2), true, []byte("\x01text/event-stream\x01 data: {\"error\":{\"message\":\"m\"}}\n\n"))
	f.Add(uint8(2), true, []byte("\x01text/event-stream\x01data: x\n\x00\x05data: {\"error\":{\"message\":\"m\"}}\n\n"))
	f.Add(uint8(2), true, []byte("\x01text/event-stream\x01data: {\"error\":\r\ndata: {\"message\":\"m\"}}\r\n\r\n"))
	// Events ended by CR, by LF then CR, a CRLF split after its CR, and a keep-alive
	// after the error event: each ends where an event ends.
	f.Add(uint8(2), true, []byte("\x01text/event-stream\x01data: {}\r\r\x00\x00data: {\"error\":{\"message\":\"m\"}}\r\r"))
	f.Add(uint8(2), true, []byte("\x01text/event-stream\x01data: {}\n\r\x00\x00data: x\r"))
	f.Add(uint8(2), true, []byte("\x01text/event-stream\x01data: {}\r\n\r\x00\x00\n\x00\x02done"))
	f.Add(uint8(2), true, []byte("\x01text/event-stream\x01data: {\"error\":{\"message\":\"m\"}}\n\n\x00\x00: ping\n\n"))
	f.Fuzz(func(t *testing.T, k uint8, stream bool, data []byte) {
		kind := queuedKinds[int(k)%len(queuedKinds)]
		msgs, clean := fuzzSyncMsgs(data)
		gw := &Server{log: slog.New(slog.DiscardHandler), cfg: Config{RetryAfter: time.Second}}
		feed := feedOf(0, msgs...)
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, kind.Path(), nil)
		sr := &syncResponse{
			s: gw, w: w, r: r, rc: http.NewResponseController(w),
			job: &broker.Job{ID: syncTestID, Kind: kind}, stream: stream, log: gw.log,
			checkEvery: time.Hour,
			check: func(context.Context) (*broker.Job, error) {
				return &broker.Job{ID: syncTestID, State: broker.StateQueued}, nil
			},
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		o := sr.run(ctx, feed)
		if o != outcomeDone && o != outcomeError {
			t.Fatalf("outcome %d with the client still there", o)
		}
		if w.Code < 200 || w.Code > 599 {
			t.Fatalf("status %d", w.Code)
		}
		if w.Code != http.StatusOK {
			if o != outcomeError {
				t.Fatalf("status %d with outcome %d", w.Code, o)
			}
			wantErrorBody(t, kind.Path(), w.Code, w.Body.Bytes())
		}
		if w.Code == http.StatusOK && o == outcomeError {
			wantErrorFrame(t, sr.ctype, w.Body.Bytes())
		}
		if clean {
			var want []byte
			for _, m := range msgs {
				if m.Header.Get(broker.HeaderFinal) != "" {
					break
				}
				want = append(want, m.Data...)
			}
			if o != outcomeDone || w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), want) {
				t.Fatalf("in-order frames and done: outcome %d, %d %q; want 200 %q", o, w.Code, w.Body.Bytes(), want)
			}
		}
	})
}

// wantErrorFrame fails unless a stream that ended in an error ends with a whole error
// frame of its format, starting where a line (NDJSON) or an event (SSE) starts, so the
// client reads it whatever the frames before it left unfinished.
func wantErrorFrame(t *testing.T, ctype string, body []byte) {
	t.Helper()
	if isSSE(ctype) {
		events, ended := sseEvents(body)
		var e struct {
			Error struct {
				Message *string `json:"message"`
			} `json:"error"`
		}
		if !ended || len(events) == 0 || json.Unmarshal([]byte(events[len(events)-1]), &e) != nil || e.Error.Message == nil {
			t.Fatalf("SSE stream does not end with a whole error event: %q", body)
		}
		return
	}
	line, ok := bytes.CutSuffix(body, []byte("\n"))
	i := bytes.LastIndexByte(line, '\n')
	var e struct {
		Error *string `json:"error"`
	}
	if !ok || json.Unmarshal(line[i+1:], &e) != nil || e.Error == nil {
		t.Fatalf("stream does not end with a whole error line: %q", body)
	}
}

// sseEvents reads body as an SSE client does (the WHATWG event stream rules): the data of
// each event dispatched, and whether body ends where an event ends (nothing after the
// last blank line).
func sseEvents(body []byte) (events []string, ended bool) {
	var data []string
	ended = true
	for len(body) > 0 {
		i := bytes.IndexAny(body, "\r\n")
		if i < 0 {
			return events, false // a line never ended
		}
		line := string(body[:i])
		if body[i] == '\r' && i+1 < len(body) && body[i+1] == '\n' {
			i++
		}
		body = body[i+1:]
		if line == "" {
			if len(data) > 0 {
				events = append(events, strings.Join(data, "\n"))
			}
			data, ended = nil, true
			continue
		}
		ended = false
		if name, value, _ := strings.Cut(line, ":"); name == "data" {
			data = append(data, strings.TrimPrefix(value, " "))
		}
	}
	return events, ended
}
