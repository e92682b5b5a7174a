package gateway

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// listFeed is a jobEvents the test fills by hand.
type listFeed struct {
	events  []broker.Event
	ready   chan struct{}
	dropped atomic.Int64
	mend    func(f *listFeed) bool // Mend's answer; nil: false
}

func (f *listFeed) Ready() <-chan struct{}    { return f.ready }
func (f *listFeed) Dropped() int              { return int(f.dropped.Load()) }
func (f *listFeed) Overflow() <-chan struct{} { return nil }
func (f *listFeed) Mend() bool                { return f.mend != nil && f.mend(f) }

func (f *listFeed) Next() (broker.Event, bool) {
	if len(f.events) == 0 {
		return broker.Event{}, false
	}
	ev := f.events[0]
	f.events = f.events[1:]
	return ev, true
}

// feedOf is a feed of msgs decoded as a broker.JobFeed decodes them, with dropped
// messages lost on the way.
func feedOf(dropped int, msgs ...*nats.Msg) *listFeed {
	f := &listFeed{ready: make(chan struct{}, 1)}
	f.dropped.Store(int64(dropped))
	var dec broker.EventDecoder
	for _, m := range msgs {
		if ev, ok := dec.Decode(m, func() int { return dropped }); ok {
			f.events = append(f.events, ev)
		}
	}
	if len(f.events) > 0 {
		f.ready <- struct{}{}
	}
	return f
}

const syncTestID = "01J00000000000000000000000"

func streamMsg(seq int, data string, hdr ...string) *nats.Msg {
	m := nats.NewMsg(broker.StreamSubject(syncTestID))
	m.Header.Set(broker.HeaderSeq, strconv.Itoa(seq))
	for i := 0; i+1 < len(hdr); i += 2 {
		m.Header.Set(hdr[i], hdr[i+1])
	}
	m.Data = []byte(data)
	return m
}

func finalMsg(seq int, final string, hdr ...string) *nats.Msg {
	return streamMsg(seq, "", append([]string{broker.HeaderFinal, final}, hdr...)...)
}

func stateMsg(t *testing.T, state broker.State, errMsg string) *nats.Msg {
	t.Helper()
	b, err := json.Marshal(&broker.Job{ID: syncTestID, State: state, Error: errMsg})
	if err != nil {
		t.Fatal(err)
	}
	return &nats.Msg{Subject: broker.StateSubject(syncTestID), Data: b}
}

type syncCase struct {
	kind    broker.Kind
	stream  bool
	msgs    []*nats.Msg
	dropped int
	record  *broker.Job   // what the watchdog's check returns; nil = still queued
	grace   time.Duration // the response's finalGrace; 0: none
	gone    bool          // the watchdog's check finds no record at all
	ctx     context.Context
	mend    func(f *listFeed) bool // the feed's Mend
	store   *broker.Store          // the gateway's; nil: none
}

// runSyncCase feeds msgs, decoded, to a sync response writing into a recorder and returns the outcome.
func runSyncCase(t *testing.T, c syncCase) (outcome, *httptest.ResponseRecorder) {
	t.Helper()
	if c.kind == "" {
		c.kind = broker.KindChat
	}
	if c.ctx == nil {
		c.ctx = testCtx(t, 10*time.Second)
	}
	gw := &Server{log: slog.New(slog.DiscardHandler), cfg: Config{RetryAfter: time.Second}, store: c.store}
	feed := feedOf(c.dropped, c.msgs...)
	feed.mend = c.mend
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodPost, "/api/chat", nil)
	sr := &syncResponse{
		s: gw, w: w, r: r, rc: http.NewResponseController(w),
		job: &broker.Job{ID: syncTestID, Kind: c.kind}, stream: c.stream, log: gw.log,
		checkEvery: time.Hour, finalGrace: c.grace,
		check: func(context.Context) (*broker.Job, error) {
			if c.gone {
				return nil, broker.ErrNotFound
			}
			if c.record != nil {
				return c.record, nil
			}
			return &broker.Job{ID: syncTestID, State: broker.StateQueued}, nil
		},
	}
	if c.record != nil || c.gone {
		sr.checkEvery = time.Millisecond
	}
	return sr.run(c.ctx, feed), w
}

func errorBody(t *testing.T, body []byte) string {
	t.Helper()
	msg, ok := errorText(body)
	if !ok {
		t.Fatalf("error body %q is neither {\"error\": \"...\"} nor {\"error\": {\"message\": ...}}", body)
	}
	return msg
}

// errorText reads an error body in either shape foreman sends: Ollama's {"error": "..."}
// or, on /v1 routes, OpenAI's {"error": {"message": "...", "type": ...}}.
func errorText(body []byte) (string, bool) {
	var e struct {
		Error json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Error) == 0 {
		return "", false
	}
	var msg string
	if json.Unmarshal(e.Error, &msg) == nil {
		return msg, msg != ""
	}
	var obj struct {
		Message string `json:"message"`
		Type    string `json:"type"`
	}
	if json.Unmarshal(e.Error, &obj) == nil && obj.Type != "" {
		return obj.Message, obj.Message != ""
	}
	return "", false
}

// ranStateMsg is a state event of a job that ran: it started before it ended.
func ranStateMsg(t *testing.T, state broker.State) *nats.Msg {
	t.Helper()
	started := time.Now()
	b, err := json.Marshal(&broker.Job{ID: syncTestID, State: state, StartedAt: &started, Attempt: 1})
	if err != nil {
		t.Fatal(err)
	}
	return &nats.Msg{Subject: broker.StateSubject(syncTestID), Data: b}
}

// On a NATS cluster a job's terminal state, republished by the jobs stream's leader on
// another node, may reach the caller's feed ahead of the runner's last frames and final
// marker. The response waits a moment for them: the client gets the whole answer, not a
// "stream gap" after the frames it had.
func TestSyncResponseStateAheadOfTheLastFrames(t *testing.T) {
	t.Parallel()
	o, w := runSyncCase(t, syncCase{stream: true, grace: time.Minute, msgs: []*nats.Msg{
		streamMsg(1, "{\"a\":1}\n", broker.HeaderContentType, "application/x-ndjson"),
		ranStateMsg(t, broker.StateDone),
		streamMsg(2, "{\"a\":2}\n"),
		finalMsg(3, "done"),
	}})
	if o != outcomeDone || w.Code != 200 || w.Body.String() != "{\"a\":1}\n{\"a\":2}\n" {
		t.Fatalf("outcome %v, status %d, body %q: want the whole answer", o, w.Code, w.Body)
	}
}

// A terminal state of a job that ran, with no final marker within the grace, is a gap
// still; one of a job that never ran (canceled while queued) ends the answer at once.
func TestSyncResponseStateWithoutItsFinalMarker(t *testing.T) {
	t.Parallel()
	o, w := runSyncCase(t, syncCase{stream: true, grace: 10 * time.Millisecond, msgs: []*nats.Msg{
		streamMsg(1, "{\"a\":1}\n", broker.HeaderContentType, "application/x-ndjson"),
		ranStateMsg(t, broker.StateDone),
	}})
	if o != outcomeError || !strings.Contains(w.Body.String(), `{"error":"stream gap: the job finished but its final frame never arrived"}`) {
		t.Fatalf("outcome %v, body %q: want the gap once the grace is over", o, w.Body)
	}
	o, w = runSyncCase(t, syncCase{stream: true, grace: time.Hour, msgs: []*nats.Msg{stateMsg(t, broker.StateCanceled, "asked")}})
	if o != outcomeError || w.Code != http.StatusConflict {
		t.Fatalf("outcome %v, status %d (%q): want the cancel at once", o, w.Code, w.Body)
	}
}

// A job canceled while it waited between attempts (retrying: its first attempt began,
// the target was unreachable) has a start, but no runner holds it, and no final marker
// will come: its caller is answered the cancel at once, as one of a job canceled while
// queued is, not after the grace for a marker, nor after asking the runner of its
// earlier attempt, another foreman, for the rest of the answer (which took three asks of
// Config.ResendWait on a cluster). A job canceled while it ran (by request, which the
// worker ends with its marker) still waits for its last frames and marker.
func TestSyncResponseCanceledBetweenAttemptsEndsAtOnce(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	canceled := func(requested string) *nats.Msg {
		started := time.Now()
		j := &broker.Job{ID: syncTestID, State: broker.StateCanceled, Error: "asked", CancelRequested: requested,
			StartedAt: &started, Attempt: 1, RunnerAttempt: 1, Runner: "mac", RunnerBoot: "other-boot"}
		data, err := json.Marshal(j)
		if err != nil {
			t.Fatal(err)
		}
		return &nats.Msg{Subject: broker.StateSubject(syncTestID), Data: data}
	}
	asked := 0
	mend := func(*listFeed) bool { asked++; return true } // a runner being asked, without end
	o, w := runSyncCase(t, syncCase{stream: true, grace: time.Hour, store: b.Store, mend: mend,
		msgs: []*nats.Msg{canceled("")}})
	if o != outcomeError || w.Code != http.StatusConflict || asked != 0 {
		t.Fatalf("outcome %v, status %d (%q), %d asks: want the cancel at once, no ask", o, w.Code, w.Body, asked)
	}
	// The watchdog's look at the record, its state event lost on the way, asks no runner.
	o, w = runSyncCase(t, syncCase{stream: true, grace: time.Hour, store: b.Store, mend: mend,
		record: jobOf(t, canceled(""))})
	if o != outcomeError || w.Code != http.StatusConflict || asked != 0 {
		t.Fatalf("watchdog: outcome %v, status %d (%q), %d asks: want the cancel, no ask", o, w.Code, w.Body, asked)
	}
	o, w = runSyncCase(t, syncCase{stream: true, grace: time.Hour, store: b.Store, msgs: []*nats.Msg{
		streamMsg(1, "{\"a\":1}\n", broker.HeaderContentType, "application/x-ndjson"),
		canceled("asked"),
		streamMsg(2, "{\"a\":2}\n"),
		finalMsg(3, "canceled", broker.HeaderError, "asked"),
	}})
	if o != outcomeError || !strings.HasPrefix(w.Body.String(), "{\"a\":1}\n{\"a\":2}\n{\"error\":") {
		t.Fatalf("canceled while it ran: outcome %v, body %q: want its last frame, then the cancel", o, w.Body)
	}
}

// jobOf is the job a state event carries.
func jobOf(t *testing.T, m *nats.Msg) *broker.Job {
	t.Helper()
	j, err := broker.DecodeJob(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestSyncResponseNDJSONInOrder(t *testing.T) {
	t.Parallel()
	o, w := runSyncCase(t, syncCase{stream: true, msgs: []*nats.Msg{
		streamMsg(1, "{\"a\":1}\n", broker.HeaderContentType, "application/x-ndjson"),
		streamMsg(2, "{\"a\":2}\n"),
		finalMsg(3, "done"),
	}})
	if o != outcomeDone || w.Code != 200 {
		t.Fatalf("outcome %v, status %d", o, w.Code)
	}
	if got := w.Header().Get("Content-Type"); got != "application/x-ndjson" {
		t.Errorf("Content-Type %q", got)
	}
	if got := w.Body.String(); got != "{\"a\":1}\n{\"a\":2}\n" {
		t.Errorf("body %q", got)
	}
}

func TestSyncResponseNonStreamHeldForContentLength(t *testing.T) {
	t.Parallel()
	o, w := runSyncCase(t, syncCase{msgs: []*nats.Msg{
		streamMsg(1, `{"done":true}`, broker.HeaderContentType, "application/json; charset=utf-8"),
		finalMsg(2, "done"),
	}})
	if o != outcomeDone || w.Code != 200 || w.Body.String() != `{"done":true}` {
		t.Fatalf("outcome %v, status %d, body %q", o, w.Code, w.Body)
	}
	if got := w.Header().Get("Content-Length"); got != "13" {
		t.Errorf("Content-Length %q", got)
	}
}

func TestSyncResponseGaps(t *testing.T) {
	t.Parallel()
	ndjson := []string{broker.HeaderContentType, "application/x-ndjson"}
	sse := []string{broker.HeaderContentType, "text/event-stream"}
	cases := []struct {
		name     string
		c        syncCase
		status   int
		wantBody func(t *testing.T, body string)
	}{
		{
			name:   "before any byte",
			c:      syncCase{stream: true, msgs: []*nats.Msg{streamMsg(2, "x\n", ndjson...)}},
			status: http.StatusBadGateway,
			wantBody: func(t *testing.T, body string) {
				if msg := errorBody(t, []byte(body)); !strings.HasPrefix(msg, "stream gap: expected frame 1, got 2") {
					t.Errorf("error %q", msg)
				}
			},
		},
		{
			name: "ndjson mid-stream",
			c: syncCase{stream: true, msgs: []*nats.Msg{
				streamMsg(1, "{\"a\":1}\n", ndjson...), streamMsg(3, "{\"a\":3}\n"), finalMsg(4, "done"),
			}},
			status: http.StatusOK,
			wantBody: func(t *testing.T, body string) {
				first, last, _ := strings.Cut(body, "\n")
				if first != `{"a":1}` {
					t.Errorf("first line %q", first)
				}
				if msg := errorBody(t, []byte(last)); !strings.HasPrefix(msg, "stream gap: expected frame 2, got 3") {
					t.Errorf("error line %q", last)
				}
			},
		},
		{
			name: "sse mid-stream",
			c: syncCase{kind: broker.KindOpenAIChat, stream: true, msgs: []*nats.Msg{
				streamMsg(1, "data: {\"x\":1}\n\n", sse...), streamMsg(1, "data: {\"x\":1}\n\n"),
			}},
			status: http.StatusOK,
			wantBody: func(t *testing.T, body string) {
				ev, ok := strings.CutPrefix(body, "data: {\"x\":1}\n\ndata: ")
				if !ok || !strings.HasSuffix(ev, "\n\n") {
					t.Fatalf("body %q", body)
				}
				var e struct {
					Error struct{ Message string } `json:"error"`
				}
				if err := json.Unmarshal([]byte(ev), &e); err != nil || !strings.HasPrefix(e.Error.Message, "stream gap:") {
					t.Errorf("error event %q (%v)", ev, err)
				}
			},
		},
		{
			name:   "frame without sequence",
			c:      syncCase{stream: true, msgs: []*nats.Msg{{Subject: broker.StreamSubject(syncTestID), Data: []byte("x")}}},
			status: http.StatusBadGateway,
			wantBody: func(t *testing.T, body string) {
				if msg := errorBody(t, []byte(body)); !strings.Contains(msg, "Foreman-Seq") {
					t.Errorf("error %q", msg)
				}
			},
		},
		{
			name: "dropped messages seen at the terminal state",
			c: syncCase{stream: true, dropped: 1, msgs: []*nats.Msg{
				streamMsg(1, "{}\n", ndjson...), stateMsg(t, broker.StateDone, ""),
			}},
			status: http.StatusOK,
			wantBody: func(t *testing.T, body string) {
				if !strings.Contains(body, `{"error":"stream gap: messages were dropped (slow consumer)"}`) {
					t.Errorf("body %q", body)
				}
			},
		},
		{
			name:   "done state without final marker",
			c:      syncCase{stream: true, msgs: []*nats.Msg{stateMsg(t, broker.StateDone, "")}},
			status: http.StatusBadGateway,
			wantBody: func(t *testing.T, body string) {
				if msg := errorBody(t, []byte(body)); !strings.HasPrefix(msg, "stream gap:") {
					t.Errorf("error %q", msg)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o, w := runSyncCase(t, tc.c)
			if o != outcomeError {
				t.Errorf("outcome %v, want error", o)
			}
			if w.Code != tc.status {
				t.Errorf("status %d, want %d (body %q)", w.Code, tc.status, w.Body)
			}
			tc.wantBody(t, w.Body.String())
		})
	}
}

func TestSyncResponseEndsWithoutFinalMarker(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		c      syncCase
		status int
		msg    string
	}{
		{"failed final with target status", syncCase{msgs: []*nats.Msg{
			finalMsg(1, "failed", broker.HeaderStatus, "400", broker.HeaderError, `"tiny-embed" does not support chat`),
		}}, 400, `"tiny-embed" does not support chat`},
		{"failed final without status", syncCase{msgs: []*nats.Msg{
			finalMsg(1, "failed", broker.HeaderError, "connection reset"),
		}}, 502, "connection reset"},
		{"canceled final", syncCase{msgs: []*nats.Msg{finalMsg(1, "canceled")}}, 409, "job canceled"},
		{"canceled state", syncCase{msgs: []*nats.Msg{
			stateMsg(t, broker.StateWorking, ""), stateMsg(t, broker.StateCanceled, "by operator"),
		}}, 409, "job canceled: by operator"},
		{"failed state (attempts exhausted)", syncCase{msgs: []*nats.Msg{
			stateMsg(t, broker.StateRetrying, "refused"), stateMsg(t, broker.StateFailed, "ollama unreachable"),
		}}, 502, "ollama unreachable"},
		{"watchdog sees the record canceled", syncCase{
			record: &broker.Job{ID: syncTestID, State: broker.StateCanceled, Error: "lost event"},
		}, 409, "job canceled: lost event"},
		{"watchdog sees dropped messages", syncCase{dropped: 2}, 502, "stream gap: messages were dropped (slow consumer)"},
		{"watchdog finds no record", syncCase{gone: true}, 502, "job record disappeared before the job ended"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.c.dropped > 0 {
				tc.c.record = &broker.Job{ID: syncTestID, State: broker.StateWorking}
			}
			o, w := runSyncCase(t, tc.c)
			if o != outcomeError || w.Code != tc.status {
				t.Fatalf("outcome %v status %d (body %q), want error %d", o, w.Code, w.Body, tc.status)
			}
			if got := errorBody(t, w.Body.Bytes()); got != tc.msg {
				t.Errorf("error %q, want %q", got, tc.msg)
			}
		})
	}
}

func TestSyncResponseClientGone(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	o, _ := runSyncCase(t, syncCase{ctx: ctx})
	if o != outcomeClientGone {
		t.Fatalf("outcome %v", o)
	}
}

// failingWriter fails every body write, as a connection whose client has left.
type failingWriter struct{ *httptest.ResponseRecorder }

func (failingWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestSyncResponseWriteErrorIsClientGone(t *testing.T) {
	t.Parallel()
	gw := &Server{log: slog.New(slog.DiscardHandler)}
	feed := feedOf(0, streamMsg(1, "{}\n", broker.HeaderContentType, "application/x-ndjson"))
	w := failingWriter{httptest.NewRecorder()}
	sr := &syncResponse{s: gw, w: w, r: httptest.NewRequest("POST", "/api/chat", nil), rc: http.NewResponseController(w),
		job: &broker.Job{ID: syncTestID, Kind: broker.KindChat}, stream: true, log: gw.log, checkEvery: time.Hour}
	if o := sr.run(testCtx(t, 10*time.Second), feed); o != outcomeClientGone {
		t.Fatalf("outcome %v", o)
	}
}

func TestParseInference(t *testing.T) {
	t.Parallel()
	cases := []struct {
		kind   broker.Kind
		body   string
		model  string
		stream bool
		err    string
	}{
		{broker.KindChat, `{"model":"tiny-a"}`, "tiny-a", true, ""},
		{broker.KindGenerate, `{"model":"tiny-a","stream":false}`, "tiny-a", false, ""},
		{broker.KindGenerate, `{"model":"tiny-a","stream":null}`, "tiny-a", true, ""},
		{broker.KindOpenAIChat, `{"model":"tiny-a","messages":[{"role":"user","content":"x"}]}`, "tiny-a", false, ""},
		{broker.KindOpenAIChat, `{"model":"tiny-a"}`, "", false, "[] is too short - 'messages'"},
		{broker.KindOpenAIChat, `{"model":"tiny-a","messages":[ ]}`, "", false, "[] is too short - 'messages'"},
		{broker.KindOpenAIChat, `null`, "", false, "[] is too short - 'messages'"},
		{broker.KindOpenAICompletion, `{"model":"tiny-a","stream":true}`, "tiny-a", true, ""},
		{broker.KindChat, ``, "", false, "missing request body"},
		{broker.KindChat, `{"model":`, "", false, "invalid JSON body"},
		{broker.KindChat, `[1]`, "", false, "invalid JSON body"},
		{broker.KindChat, `{"model":" "}`, "", false, "model is required"},
		{broker.KindChat, `null`, "", false, "model is required"},
		{broker.KindChat, `{"name":"tiny-a"}`, "", false, "model is required"},
		{broker.KindOpenAIChat, `{"name":"tiny-a","model":"","messages":[{"role":"user","content":"x"}]}`, "", false, "model is required"},
	}
	for _, c := range cases {
		in, err := parseInference(c.kind, []byte(c.body))
		model, stream := in.model, in.stream
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s %s: err %v, want %q", c.kind, c.body, err, c.err)
			}
			if st, _ := statusOf(err); err != nil && st != 400 {
				t.Errorf("%s: status %d", c.body, st)
			}
			continue
		}
		if err != nil || model != c.model || stream != c.stream {
			t.Errorf("%s %s: got %q %v %v", c.kind, c.body, model, stream, err)
		}
	}
}

// A gap after part of a frame (a piece of a frame larger than a NATS message) must not
// glue the error frame to the partial one: the error starts a line (an event) of its own.
func TestSyncResponseErrorAfterPartialFrame(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		kind      broker.Kind
		ctype     string
		partial   string
		wantAfter string
	}{
		{broker.KindChat, "application/x-ndjson", `{"message":{"content":"ab`, "\n{\"error\":"},
		{broker.KindOpenAIChat, "text/event-stream", `data: {"choices":[{"delta":{"content":"ab`, "\n\ndata: {\"error\":"},
		{broker.KindOpenAIChat, "text/event-stream", "data: {}\n", "\ndata: {\"error\":"},
	} {
		o, w := runSyncCase(t, syncCase{kind: c.kind, stream: true, msgs: []*nats.Msg{
			streamMsg(1, c.partial, broker.HeaderContentType, c.ctype),
			streamMsg(3, "lost piece after this one"),
		}})
		want := c.partial + c.wantAfter
		if o != outcomeError || w.Code != 200 || !strings.HasPrefix(w.Body.String(), want) {
			t.Errorf("%s: outcome %d, %d %q; want the stream to go on with %q", c.ctype, o, w.Code, w.Body.String(), want)
		}
	}
}

// A Content-Type whose parameters do not parse counts by its media type, as
// ollama.FramingOf reads it for the client and the worker: such an SSE answer is relayed
// as it comes, and an error after it is an SSE event.
func TestSyncResponseFramingOfBrokenParameter(t *testing.T) {
	t.Parallel()
	o, w := runSyncCase(t, syncCase{kind: broker.KindOpenAIChat, stream: true, msgs: []*nats.Msg{
		streamMsg(1, "data: {}\n\n", broker.HeaderContentType, "text/event-stream; x"),
		streamMsg(3, "lost piece after this one"),
	}})
	want := "data: {}\n\ndata: {\"error\":"
	if o != outcomeError || w.Code != 200 || !strings.HasPrefix(w.Body.String(), want) {
		t.Fatalf("outcome %d, %d %q; want the stream to go on with %q", o, w.Code, w.Body.String(), want)
	}
	if got := w.Header().Get("Content-Length"); got != "" {
		t.Errorf("Content-Length %q on a streamed answer", got)
	}
}

// A job that ended without its final marker reaching the response is asked of its
// runner again (ADR-0078) when that is another foreman: what the feed then yields ends
// the answer whole. A job this foreman ran, or one whose runner does not name itself (a
// version that keeps nothing for a resend), is not asked for: the answer ends with the
// gap at once.
func TestSyncResponseMendsOnlyAnotherForemansRun(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ended := func(boot string) *nats.Msg {
		started := time.Now()
		j := &broker.Job{ID: syncTestID, State: broker.StateDone, StartedAt: &started, Attempt: 1,
			RunnerAttempt: 1, Runner: "mac", RunnerBoot: boot}
		data, err := json.Marshal(j)
		if err != nil {
			t.Fatal(err)
		}
		return &nats.Msg{Subject: broker.StateSubject(syncTestID), Data: data}
	}
	for _, c := range []struct {
		name, boot string
		mended     bool
	}{
		{"another foreman's run", "other-boot", true},
		{"this foreman's run", b.Store.BootID(), false},
		{"a run that names no foreman", "", false},
	} {
		asked := 0
		o, w := runSyncCase(t, syncCase{stream: true, grace: 10 * time.Millisecond, store: b.Store,
			msgs: []*nats.Msg{
				streamMsg(1, "{\"a\":1}\n", broker.HeaderContentType, "application/x-ndjson"),
				ended(c.boot),
			},
			mend: func(f *listFeed) bool {
				asked++
				var dec broker.EventDecoder
				_, _ = dec.Decode(streamMsg(1, "{\"a\":1}\n"), func() int { return 0 })
				for _, m := range []*nats.Msg{streamMsg(2, "{\"a\":2}\n"), finalMsg(3, "done")} {
					ev, _ := dec.Decode(m, func() int { return 0 })
					f.events = append(f.events, ev)
				}
				f.ready <- struct{}{}
				return true
			}})
		switch {
		case c.mended && (asked != 1 || o != outcomeDone || w.Body.String() != "{\"a\":1}\n{\"a\":2}\n"):
			t.Errorf("%s: asked %d times, outcome %v, body %q; want one ask and the whole answer", c.name, asked, o, w.Body)
		case !c.mended && (asked != 0 || o != outcomeError || !strings.Contains(w.Body.String(), "stream gap: the job finished but its final frame never arrived")):
			t.Errorf("%s: asked %d times, outcome %v, body %q; want no ask and the gap", c.name, asked, o, w.Body)
		}
	}
}
