package gateway

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// handJob posts body to path and publishes frames by hand for the job it creates (no
// worker runs), then returns the answer.
func handJob(t *testing.T, path string, body []byte, frames func(id string) []*nats.Msg) rawResponse {
	t.Helper()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	states := watchStates(t, b.Broker.Conn)
	res := make(chan rawResponse, 1)
	go func() { res <- post(t, ctx, b.URL, path, body) }()
	job := waitState(t, ctx, states, "job queued", func(j *broker.Job) bool { return j.State == broker.StateQueued })
	for _, m := range frames(job.ID) {
		if err := b.Broker.Conn.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case r := <-res:
		return r
	case <-ctx.Done():
		t.Fatal("the request hung")
	}
	return rawResponse{}
}

// One message lost is a gap as much as many: the watchdog reports it while the job runs
// on, rather than leaving the client waiting for the job's end.
func TestWatchdogReportsASingleDroppedMessage(t *testing.T) {
	t.Parallel()
	o, w := runSyncCase(t, syncCase{dropped: 1, record: &broker.Job{ID: syncTestID, State: broker.StateWorking}})
	if o != outcomeError || w.Code != http.StatusBadGateway {
		t.Fatalf("outcome %v status %d (body %q), want error 502", o, w.Code, w.Body)
	}
	if got := errorBody(t, w.Body.Bytes()); got != "stream gap: messages were dropped (slow consumer)" {
		t.Errorf("error %q", got)
	}
}

// The watchdog ends a response on a terminal record only at its second sighting: the
// final marker may be on its way, and the first sighting must leave it time to come.
func TestWatchdogWaitsForASecondTerminalSighting(t *testing.T) {
	t.Parallel()
	gw := &Server{log: slog.New(slog.DiscardHandler), cfg: Config{RetryAfter: time.Second}}
	w := httptest.NewRecorder()
	checks := 0
	sr := &syncResponse{s: gw, w: w, r: httptest.NewRequest(http.MethodPost, "/api/chat", nil), rc: http.NewResponseController(w),
		job: &broker.Job{ID: syncTestID, Kind: broker.KindChat}, log: gw.log, checkEvery: time.Hour,
		check: func(context.Context) (*broker.Job, error) {
			checks++
			return &broker.Job{ID: syncTestID, State: broker.StateDone}, nil
		}}
	feed := feedOf(0)
	if _, end := sr.watchdog(context.Background(), feed); end || sr.started || w.Body.Len() != 0 {
		t.Fatalf("first sighting of the terminal record ended the response (body %q)", w.Body)
	}
	o, end := sr.watchdog(context.Background(), feed)
	if !end || o != outcomeError || w.Code != http.StatusBadGateway || checks != 2 {
		t.Fatalf("second sighting: end %v outcome %v status %d, %d checks", end, o, w.Code, checks)
	}
	if msg := errorBody(t, w.Body.Bytes()); !strings.HasPrefix(msg, "stream gap:") {
		t.Errorf("error %q", msg)
	}
}

// An SSE stream whose events end in CRLF ("\r\n\r\n") is at an event's end: an error
// event after it follows directly, with no blank lines of its own.
func TestSSEErrorAfterCRLFEventFollowsDirectly(t *testing.T) {
	t.Parallel()
	first := "data: {\"x\":1}\r\n\r\n"
	got := handJob(t, "/v1/chat/completions", chatBody("tiny-a", "hi", "true"), func(id string) []*nats.Msg {
		return []*nats.Msg{
			jobFrame(id, 1, first, broker.HeaderContentType, "text/event-stream"),
			jobFrame(id, 3, "data: {\"x\":3}\r\n\r\n"),
		}
	})
	if got.Status != http.StatusOK || !strings.HasPrefix(string(got.Body), first+"data: {\"error\":") {
		t.Fatalf("got %d %q, want the error event right after the first", got.Status, got.Body)
	}
}

// A failed job whose error is an OpenAI error body answers an Ollama route with its
// message, in Ollama's {"error": "..."}, not with the body quoted.
func TestOllamaRouteGetsTheMessageOfAnOpenAIErrorBody(t *testing.T) {
	t.Parallel()
	got := handJob(t, "/api/chat", chatBody("tiny-a", "hi", "false"), func(id string) []*nats.Msg {
		return []*nats.Msg{jobFrame(id, 1, "", broker.HeaderFinal, "failed", broker.HeaderStatus, "400",
			broker.HeaderError, `{"error":{"message":"boom","type":"invalid_request_error"}}`)}
	})
	if got.Status != http.StatusBadRequest {
		t.Fatalf("got %d %s, want 400", got.Status, got.Body)
	}
	if msg := errorBody(t, got.Body); msg != "boom" {
		t.Errorf("error %q, want %q", msg, "boom")
	}
}

// A job canceled after the target's stream ended with an error frame still tells the
// client it was canceled: only the job's own failure is the error the client has.
func TestCancelAfterARelayedErrorFrameIsToldToo(t *testing.T) {
	t.Parallel()
	got := handJob(t, "/api/chat", chatBody("tiny-a", "hi", ""), func(id string) []*nats.Msg {
		return []*nats.Msg{
			jobFrame(id, 1, "{\"error\":\"target broke\"}\n", broker.HeaderContentType, "application/x-ndjson"),
			jobFrame(id, 2, "", broker.HeaderFinal, "canceled"),
		}
	})
	lines := strings.Split(strings.TrimSuffix(string(got.Body), "\n"), "\n")
	if got.Status != http.StatusOK || len(lines) != 2 || lines[0] != `{"error":"target broke"}` {
		t.Fatalf("got %d %q", got.Status, got.Body)
	}
	if msg := errorBody(t, []byte(lines[1])); !strings.HasPrefix(msg, "job canceled") {
		t.Errorf("last line %q, want the cancel", lines[1])
	}
}

// deadlineOnSecondWrite takes a response's first write, then fails the next as a
// connection past its write deadline does.
type deadlineOnSecondWrite struct {
	*httptest.ResponseRecorder
	writes int
}

func (w *deadlineOnSecondWrite) Write(p []byte) (int, error) {
	w.writes++
	if w.writes > 1 {
		return 0, &net.OpError{Op: "write", Net: "tcp", Err: os.ErrDeadlineExceeded}
	}
	return w.ResponseRecorder.Write(p)
}

func (w *deadlineOnSecondWrite) SetWriteDeadline(time.Time) error { return nil }

// A client too slow to take the error line of a gap is cut off, not taken for gone: its
// job, still running, is not canceled.
func TestGapErrorLineTimingOutIsACutOff(t *testing.T) {
	t.Parallel()
	gw := &Server{log: slog.New(slog.DiscardHandler), cfg: Config{WriteTimeout: time.Second}}
	w := &deadlineOnSecondWrite{ResponseRecorder: httptest.NewRecorder()}
	feed := feedOf(0, streamMsg(1, "{}\n", broker.HeaderContentType, "application/x-ndjson"), streamMsg(3, "{}\n"))
	sr := &syncResponse{s: gw, w: w, r: httptest.NewRequest(http.MethodPost, "/api/chat", nil), rc: http.NewResponseController(w),
		job: &broker.Job{ID: syncTestID, Kind: broker.KindChat}, stream: true, log: gw.log, checkEvery: time.Hour}
	if o := sr.run(context.Background(), feed); o != outcomeCutOff {
		t.Fatalf("outcome %v, want a cut-off (body %q)", o, w.Body)
	}
}

// A worker that names no Content-Type gets the one Ollama answers with: JSON for a
// non-streamed call (with its Content-Length, 0 for no body), NDJSON for a streamed
// chat.
func TestDefaultContentTypeOfAnUnnamedAnswer(t *testing.T) {
	t.Parallel()
	got := handJob(t, "/api/chat", chatBody("tiny-a", "hi", "false"), func(id string) []*nats.Msg {
		return []*nats.Msg{jobFrame(id, 1, "", broker.HeaderFinal, "done")}
	})
	if got.Status != http.StatusOK || got.CType != "application/json; charset=utf-8" || got.Header.Get("Content-Length") != "0" {
		t.Errorf("non-streamed: %d %q Content-Length %q", got.Status, got.CType, got.Header.Get("Content-Length"))
	}
	frame := "{\"done\":true}\n"
	got = handJob(t, "/api/chat", chatBody("tiny-a", "hi", ""), func(id string) []*nats.Msg {
		return []*nats.Msg{jobFrame(id, 1, frame), jobFrame(id, 2, "", broker.HeaderFinal, "done")}
	})
	if got.Status != http.StatusOK || got.CType != "application/x-ndjson" || string(got.Body) != frame {
		t.Errorf("streamed: %d %q %q", got.Status, got.CType, got.Body)
	}
}

// A sequence_number cut off at a piece's end is not taken: its digits may go on in the
// next piece.
func TestLastSequenceNumberSkipsANumberCutOff(t *testing.T) {
	t.Parallel()
	b := []byte("event: a\ndata: {\"sequence_number\":4}\n\nevent: b\ndata: {\"sequence_number\":12")
	if n, ok := lastSequenceNumber(b); !ok || n != 4 {
		t.Errorf("got %d %v, want 4", n, ok)
	}
}

// A sync call cut for an outage is cut once it has lasted SyncOutageWait, not at some
// later check: the time it reports is under twice the wait.
func TestSyncCallCutForAnOutageAtItsBound(t *testing.T) {
	t.Parallel()
	const wait = 4 * time.Second // the cut comes at most a check (wait/4) late; the margin to 2*wait absorbs a loaded machine
	opt, start := withOutageWait(t, wait)
	b := newTestBundle(t, opt)
	b.Fake.SetDown(true)
	start()
	resp, out := b.request(t, http.MethodPost, "/api/chat", chatBody("tiny-a", "now", "false"))
	wantError(t, resp, out, http.StatusBadGateway, "the job was canceled")
	msg, _ := errorText(out)
	_, rest, ok := strings.Cut(msg, "ollama was unreachable for ")
	d, err := time.ParseDuration(strings.SplitN(rest, " ", 2)[0])
	if !ok || err != nil {
		t.Fatalf("error %q names no duration (%v)", msg, err)
	}
	if d < wait || d >= 2*wait {
		t.Errorf("cut after %s of outage, want it at %s (checks every %s)", d, wait, wait/4)
	}
}
