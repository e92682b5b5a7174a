package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// rawRequest opens a connection to the bundle and writes a request's head plus the
// first part of its body; the test decides what happens next.
func (b *testBundle) rawRequest(t *testing.T, method, path string, contentLength int, part string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(b.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	head := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		method, path, contentLength, part)
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	return conn
}

// readResponse waits for the response on conn; the connection deadline only keeps a
// broken build from hanging the test.
func readResponse(t *testing.T, conn net.Conn) (*http.Response, []byte) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no response: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// A client that sends its headers and then trickles the body is cut off with 408 once
// the body deadline passes, on every route that reads a body.
func TestSlowBodyUploadCutOff(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) { c.BodyReadTimeout = 200 * time.Millisecond }))
	for _, path := range []string{"/api/chat", "/jobs", "/api/show"} {
		conn := b.rawRequest(t, http.MethodPost, path, 1000, `{"model":`)
		resp, body := readResponse(t, conn)
		wantError(t, resp, body, http.StatusRequestTimeout, "request body not received within 200ms")
	}
}

// The body deadline is cleared once the body is read: an answer that takes longer than
// it is neither cut nor is its job canceled.
func TestBodyReadDeadlineDoesNotEndALongAnswer(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil,
		withFake(ollamatest.WithTokenDelay(25*time.Millisecond)),
		withGateway(func(c *Config) { c.BodyReadTimeout = 100 * time.Millisecond }))
	ctx := testCtx(t, 30*time.Second)
	r := post(t, ctx, b.URL, "/api/generate", []byte(`{"model":"tiny-a","prompt":"slow","options":{"num_predict":12}}`))
	if r.Status != 200 || !strings.Contains(string(r.Body), `"done":true`) {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	j := waitRecord(t, ctx, b.Broker.Store, r.Header.Get(HeaderJobID), func(j *broker.Job) bool { return j.State.Terminal() })
	if j.State != broker.StateDone {
		t.Errorf("job %s %q", j.State, j.Error)
	}
}

// A streaming client that stops reading while the target streams a lot is cut off: its
// handler returns, the job is not canceled but ends done with its result under
// /jobs/{id}, and what waited for the client never passed the stream buffer. With a
// small buffer either bound may cut first; with a huge one the write deadline must.
func TestSlowStreamingClientCutOffJobRunsOn(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		buffer int64
		reason string
	}{
		{"small buffer", 64 << 10, "client cut off"},
		{"write deadline", 1 << 30, "made no progress for 300ms"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			logs := &lockedBuffer{}
			b := newQueuedBundle(t, nil, withSendBuffer(16<<10), withGateway(func(cfg *Config) {
				cfg.WriteTimeout = 300 * time.Millisecond
				cfg.StreamBuffer = c.buffer
				cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
			}))
			ctx := testCtx(t, 20*time.Second)
			body := `{"model":"tiny-a","prompt":"flood","options":{"num_predict":20000}}`
			conn := b.rawRequest(t, http.MethodPost, "/api/generate", len(body), body)
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetReadBuffer(4 << 10)
			}
			// Read the head for the job id, then stop reading.
			_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 4<<10), nil)
			if err != nil {
				t.Fatal(err)
			}
			id := resp.Header.Get(HeaderJobID)
			if resp.StatusCode != 200 || id == "" {
				t.Fatalf("%d, job %q", resp.StatusCode, id)
			}

			for b.GW.syncs.active.Load() != 0 {
				select {
				case <-ctx.Done():
					t.Fatalf("the relay to the slow client never ended\n%s", logs.String())
				case <-time.After(5 * time.Millisecond):
				}
			}
			if n := b.GW.syncs.cutOff.Load(); n != 1 {
				t.Fatalf("the relay ended with %d cut-offs, want 1\n%s", n, logs.String())
			}
			j := waitRecord(t, ctx, b.Broker.Store, id, func(j *broker.Job) bool { return j.State.Terminal() })
			if j.State != broker.StateDone {
				t.Fatalf("job %s %q; cutting a slow client off must not end its job", j.State, j.Error)
			}
			r, out := b.request(t, http.MethodGet, "/jobs/"+id, nil)
			var v jobView
			if r.StatusCode != 200 || json.Unmarshal(out, &v) != nil || v.State != broker.StateDone || len(v.Result) == 0 {
				t.Fatalf("GET /jobs/%s: %d %.300s", id, r.StatusCode, out)
			}
			if peak := b.GW.syncs.peak.Load(); peak > c.buffer || peak == 0 {
				t.Errorf("the feed held up to %d bytes; the cap is %d", peak, c.buffer)
			}
			if _, m := b.request(t, http.MethodGet, "/metrics", nil); !strings.Contains(string(m), "foreman_slow_clients_cut_off_total 1") {
				t.Errorf("/metrics does not count the cut-off")
			}
			if !strings.Contains(logs.String(), c.reason) || !strings.Contains(logs.String(), "job_id="+id) {
				t.Errorf("log lacks %q for job %s:\n%s", c.reason, id, logs.String())
			}
		})
	}
}

// lockedBuffer is a log sink safe for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A feed that outgrows its buffer drops what comes next and reports an overflow; the
// relay then cuts the client off with an error line instead of a gap.
func TestFeedOverflowCutsOff(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	var stats syncStats
	const limit = 4 << 10
	feed, err := b.Broker.Store.Feed(syncTestID, broker.FeedConfig{Buffer: limit, Peak: stats.notePeak})
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	frame := strings.Repeat("x", 500) + "\n"
	for i := 1; i <= 40; i++ {
		hdr := []string{}
		if i == 1 {
			hdr = []string{broker.HeaderContentType, "application/x-ndjson"}
		}
		if err := b.Broker.Conn.PublishMsg(streamMsg(i, frame, hdr...)); err != nil {
			t.Fatal(err)
		}
	}
	ctx := testCtx(t, 10*time.Second)
	select {
	case <-feed.Overflow():
	case <-ctx.Done():
		t.Fatalf("no overflow; %d bytes buffered", feed.Buffered())
	}
	if peak := stats.peak.Load(); peak > limit {
		t.Errorf("peak %d bytes over the %d limit", peak, limit)
	}
	gw := &Server{log: b.GW.log, cfg: Config{StreamBuffer: limit}}
	w := httptest.NewRecorder()
	sr := &syncResponse{s: gw, w: w, r: httptest.NewRequest(http.MethodPost, "/api/chat", nil), rc: http.NewResponseController(w),
		job: &broker.Job{ID: syncTestID, Kind: broker.KindChat}, stream: true, log: gw.log, checkEvery: time.Hour}
	if o := sr.run(ctx, feed); o != outcomeCutOff {
		t.Fatalf("outcome %v, body %q", o, w.Body)
	}
	if gw.syncs.cutOff.Load() != 1 {
		t.Errorf("cut-offs counted: %d", gw.syncs.cutOff.Load())
	}
	msg := lastErrorLine(t, w.Body.String())
	if !strings.Contains(msg, "client too slow") || !strings.Contains(msg, "/jobs/"+syncTestID) {
		t.Errorf("error line %q", msg)
	}
}

// A relay whose write times out reports a cut-off, not a departed client: the job must
// not be canceled.
func TestSyncResponseWriteTimeoutIsCutOff(t *testing.T) {
	t.Parallel()
	gw := &Server{log: slog.New(slog.DiscardHandler), cfg: Config{WriteTimeout: time.Second}}
	w := &timeoutWriter{ResponseRecorder: httptest.NewRecorder()}
	feed := feedOf(0, streamMsg(1, "{}\n", broker.HeaderContentType, "application/x-ndjson"))
	sr := &syncResponse{s: gw, w: w, r: httptest.NewRequest(http.MethodPost, "/api/chat", nil), rc: http.NewResponseController(w),
		job: &broker.Job{ID: syncTestID, Kind: broker.KindChat}, stream: true, log: gw.log, checkEvery: time.Hour}
	if o := sr.run(context.Background(), feed); o != outcomeCutOff {
		t.Fatalf("outcome %v", o)
	}
	if gw.syncs.cutOff.Load() != 1 {
		t.Errorf("cut-offs counted: %d", gw.syncs.cutOff.Load())
	}
}

// timeoutWriter fails a write as a connection past its write deadline does; net/http
// then closes the connection, so setting a deadline fails afterwards.
type timeoutWriter struct {
	*httptest.ResponseRecorder
	closed bool
}

func (w *timeoutWriter) Write([]byte) (int, error) {
	if w.closed {
		return 0, net.ErrClosed
	}
	w.closed = true
	return 0, &net.OpError{Op: "write", Net: "tcp", Err: os.ErrDeadlineExceeded}
}

func (w *timeoutWriter) SetWriteDeadline(time.Time) error {
	if w.closed {
		return &net.OpError{Op: "set", Net: "tcp", Err: net.ErrClosed}
	}
	return nil
}

// lastErrorLine is the error of a stream's last line.
func lastErrorLine(t *testing.T, body string) string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(body), "\n")
	return errorBody(t, []byte(lines[len(lines)-1]))
}

// deadlineRecorder counts the write deadlines a relay sets.
type deadlineRecorder struct {
	*httptest.ResponseRecorder
	deadlines int
}

func (w *deadlineRecorder) SetWriteDeadline(time.Time) error { w.deadlines++; return nil }

// A large answer gets a deadline per chunk: WriteTimeout bounds a lack of progress, not
// how long a big body takes to a slow reader.
func TestSyncResponseWriteDeadlinePerChunk(t *testing.T) {
	t.Parallel()
	gw := &Server{log: slog.New(slog.DiscardHandler), cfg: Config{WriteTimeout: time.Second}}
	w := &deadlineRecorder{ResponseRecorder: httptest.NewRecorder()}
	big := strings.Repeat("x", 5*writeChunk+1)
	feed := feedOf(0, streamMsg(1, big, broker.HeaderContentType, "application/json"), finalMsg(2, "done"))
	sr := &syncResponse{s: gw, w: w, r: httptest.NewRequest(http.MethodPost, "/api/chat", nil), rc: http.NewResponseController(w),
		job: &broker.Job{ID: syncTestID, Kind: broker.KindChat}, log: gw.log, checkEvery: time.Hour}
	if o := sr.run(context.Background(), feed); o != outcomeDone || w.Body.Len() != len(big) {
		t.Fatalf("outcome %v, %d bytes", o, w.Body.Len())
	}
	if w.deadlines != 6 {
		t.Errorf("%d write deadlines for 6 chunks", w.deadlines)
	}
}
