package client_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// writePadded writes head, n bytes of JSON white space, then tail: a valid answer of any
// size, cheap to send and to decode.
func writePadded(w io.Writer, head string, n int, tail string) {
	_, _ = io.WriteString(w, head)
	pad := bytes.Repeat([]byte(" "), 64<<10)
	for n > 0 {
		k := min(n, len(pad))
		if _, err := w.Write(pad[:k]); err != nil {
			return // the client stopped reading
		}
		n -= k
	}
	_, _ = io.WriteString(w, tail)
}

// hugeServer answers every route with a valid answer over bytes larger than the client's
// bound on it (over may be 0: the bound itself).
func hugeServer(t *testing.T, over int) string {
	t.Helper()
	job := `{"id":"01JGJ4Q2R0000000000000000A","kind":"chat","model":"m","state":"queued"}`
	mux := http.NewServeMux()
	mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, _ *http.Request) {
		writePadded(w, "", client.MaxJobAnswer+over-len(job), job)
	})
	mux.HandleFunc("DELETE /jobs/{id}", func(w http.ResponseWriter, _ *http.Request) {
		writePadded(w, "", client.MaxJobAnswer+over-len(job), job)
	})
	mux.HandleFunc("GET /jobs", func(w http.ResponseWriter, _ *http.Request) {
		// Jobs asks for a page of 1.
		writePadded(w, `{"jobs":[`, client.MaxListBase+client.MaxListEntry+over-len(`{"jobs":[]}`), `]}`)
	})
	mux.HandleFunc("GET /queue", func(w http.ResponseWriter, _ *http.Request) {
		// Queue asks for 1 waiting job: one of queued, one of waiting_elsewhere.
		writePadded(w, `{"queued":[`, client.MaxListBase+2*client.MaxQueueEntry+over-len(`{"queued":[]}`), `]}`)
	})
	for _, p := range []string{"GET /api/tags", "GET /api/ps", "POST /api/embed"} {
		mux.HandleFunc(p, func(w http.ResponseWriter, _ *http.Request) {
			writePadded(w, `{"models":[`, client.MaxTargetAnswer+over-len(`{"models":[]}`), `]}`)
		})
	}
	mux.HandleFunc("GET /jobs/{id}/artifacts/{name}", func(w http.ResponseWriter, _ *http.Request) {
		writePadded(w, "", client.MaxTargetAnswer+over, "")
	})
	submitted := `{"job_id":"01JGJ4Q2R0000000000000000A"}`
	mux.HandleFunc("POST /jobs", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		writePadded(w, submitted[:len(submitted)-1], client.MaxSmallAnswer+over-len(submitted), "}")
	})
	// One NDJSON line longer than the bound, then the end of the answer.
	mux.HandleFunc("POST /api/chat", func(w http.ResponseWriter, _ *http.Request) {
		writePadded(w, `{"model":"m","message":{"role":"assistant","content":"x"}`, client.MaxStreamLine+over, `,"done":true}`+"\n")
	})
	// Lines each within the bound, together longer than a whole answer may be; each names
	// its model, as Ollama's chunks do (a first line that does not is a foreign answer).
	mux.HandleFunc("POST /api/generate", func(w http.ResponseWriter, _ *http.Request) {
		line := []byte(`{"model":"m","response":"x"}` + strings.Repeat(" ", 1<<20) + "\n")
		for n := 0; n <= client.MaxStream+over; n += len(line) {
			if _, err := w.Write(line); err != nil {
				return
			}
		}
		_, _ = io.WriteString(w, `{"model":"m","response":"","done":true}`+"\n")
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// countingClient is an http.Client that counts the bytes it reads from its connections.
func countingClient(read *atomic.Int64) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c, read: read}, nil
	}
	return &http.Client{Transport: tr}
}

type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// sizedCall is one of the client's calls whose answers hugeServer makes large.
type sizedCall struct {
	name string
	call func() error
	// bound is the client's bound on the answer, given for the first call of each way
	// the client reads one (a whole answer, an artifact, a stream's line, a whole
	// stream); atBound marks a call to which an answer of exactly the bound is valid (a
	// stream's bounds are not reached by a valid answer of one exact size) and not slow
	// to decode.
	bound   int
	atBound bool
}

func sizedCalls(ctx context.Context, c *client.Client) []sizedCall {
	const id = "01JGJ4Q2R0000000000000000A"
	return []sizedCall{
		{"Job", func() error { _, err := c.Job(ctx, id); return err }, client.MaxJobAnswer, true},
		{"Cancel", func() error { _, err := c.Cancel(ctx, id); return err }, 0, true},
		{"Jobs", func() error { _, err := c.Jobs(ctx, client.JobFilter{Limit: 1}); return err }, 0, true},
		{"Queue", func() error { _, err := c.Queue(ctx, 1); return err }, 0, true},
		{"Tags", func() error { _, err := c.Tags(ctx); return err }, 0, false},
		{"Ps", func() error { _, err := c.Ps(ctx); return err }, 0, false},
		{"Embed", func() error { _, err := c.Embed(ctx, client.EmbedRequest{Model: "m"}); return err }, 0, false},
		{"Artifact", func() error { _, err := c.Artifact(ctx, id, "result.json"); return err }, client.MaxTargetAnswer, true},
		{"SubmitAsync", func() error { _, err := c.SubmitAsync(ctx, chatJob("m", "hi")); return err }, 0, true},
		{"Chat line", func() error { _, err := c.Chat(ctx, client.ChatRequest{Model: "m"}, nil); return err }, client.MaxStreamLine, false},
		{"Generate whole", func() error { _, err := c.Generate(ctx, client.GenerateRequest{Model: "m"}, nil); return err }, client.MaxStream, false},
	}
}

// TestAnswerTooLarge: no answer of a server is read without bound. One larger than any
// foreman sends fails with ErrAnswerTooLarge instead of filling the client's memory, and
// the client reads no further than the bound; one of exactly the bound is read.
func TestAnswerTooLarge(t *testing.T) {
	t.Parallel()
	// Not testCtx: reading an answer of up to 256 MiB takes longer than its 30 s on a
	// loaded machine under -race, and the bound tested is one of size, not time (a call
	// cut by its deadline fails with the context's error). A call that hangs is stopped
	// by go test's -timeout.
	ctx := t.Context()
	for _, s := range sizedCalls(ctx, newClient(t, hugeServer(t, 1), client.WithPollingOnly())) {
		if err := s.call(); !errors.Is(err, client.ErrAnswerTooLarge) || !strings.Contains(err.Error(), "too large") {
			t.Errorf("%s, one byte over its bound: err = %v; want ErrAnswerTooLarge", s.name, err)
		}
	}

	// An answer 32 MiB over its bound is read no further than the bound (and what the
	// connection's buffers take at once), not to its end.
	var read atomic.Int64
	huge := hugeServer(t, 32<<20)
	for _, s := range sizedCalls(ctx, newClient(t, huge, client.WithPollingOnly(), client.WithHTTPClient(countingClient(&read)))) {
		if s.bound == 0 {
			continue
		}
		read.Store(0)
		if err := s.call(); !errors.Is(err, client.ErrAnswerTooLarge) {
			t.Errorf("%s, 32 MiB over its bound: err = %v; want ErrAnswerTooLarge", s.name, err)
		}
		if n := read.Load(); n > int64(s.bound)+1<<20 {
			t.Errorf("%s read %d bytes of an answer 32 MiB over its bound of %d; want the read stopped at the bound", s.name, n, s.bound)
		}
	}

	for _, s := range sizedCalls(ctx, newClient(t, hugeServer(t, 0), client.WithPollingOnly())) {
		if !s.atBound {
			continue
		}
		if err := s.call(); err != nil {
			t.Errorf("%s, an answer of exactly its bound: %v; want it read", s.name, err)
		}
	}
}

// TestHugeLimitKeepsTheAnswerBound: the bound on a page's answer grows with the limit
// asked, up to the largest foreman takes; a larger limit (which foreman refuses, but a
// server in its place may not) once overflowed the bound, and every answer, however
// small, was "too large (more than -9223372036850581504 bytes)".
func TestHugeLimitKeepsTheAnswerBound(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /jobs", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"jobs":[]}`)
	})
	mux.HandleFunc("GET /queue", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"queued":[],"total":0}`)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, client.WithPollingOnly())
	// 1<<45 jobs of 256 KiB and 2 × 1<<51 waiting jobs of 2 KiB are each 1<<63 bytes.
	if _, err := c.Jobs(testCtx(t), client.JobFilter{Limit: 1 << 45}); err != nil {
		t.Errorf("Jobs with a huge limit: %v", err)
	}
	if _, err := c.Queue(testCtx(t), 1<<51); err != nil {
		t.Errorf("Queue with a huge limit: %v", err)
	}
}
