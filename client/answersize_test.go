package client_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// writePadded writes head, n bytes of JSON white space, then tail: a valid answer of any
// size, cheap to send and to decode. It reports whether it wrote it all, which it cannot
// once the client stops reading.
func writePadded(w io.Writer, head string, n int, tail string) bool {
	if _, err := io.WriteString(w, head); err != nil {
		return false
	}
	pad := bytes.Repeat([]byte(" "), 64<<10)
	for n > 0 {
		k := min(n, len(pad))
		if _, err := w.Write(pad[:k]); err != nil {
			return false // the client stopped reading
		}
		n -= k
	}
	_, err := io.WriteString(w, tail)
	return err == nil
}

// hugeServer answers every route with a valid answer over bytes larger than the client's
// bound on it (over may be 0: the bound itself); whole counts the answers written to
// their end. Closing srv waits for every answer.
func hugeServer(t *testing.T, over int) (srv *httptest.Server, whole *atomic.Int32) {
	t.Helper()
	whole = new(atomic.Int32)
	padded := func(w io.Writer, head string, n int, tail string) {
		if writePadded(w, head, n, tail) {
			whole.Add(1)
		}
	}
	job := `{"id":"01JGJ4Q2R0000000000000000A","kind":"chat","model":"m","state":"queued"}`
	mux := http.NewServeMux()
	mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, _ *http.Request) {
		padded(w, "", client.MaxJobAnswer+over-len(job), job)
	})
	mux.HandleFunc("DELETE /jobs/{id}", func(w http.ResponseWriter, _ *http.Request) {
		padded(w, "", client.MaxJobAnswer+over-len(job), job)
	})
	mux.HandleFunc("GET /jobs", func(w http.ResponseWriter, _ *http.Request) {
		// Jobs asks for a page of 1.
		padded(w, `{"jobs":[`, client.MaxListBase+client.MaxListEntry+over-len(`{"jobs":[]}`), `]}`)
	})
	mux.HandleFunc("GET /queue", func(w http.ResponseWriter, _ *http.Request) {
		// Queue asks for 1 waiting job.
		padded(w, `{"queued":[`, client.MaxListBase+client.MaxQueueEntry+over-len(`{"queued":[]}`), `]}`)
	})
	for _, p := range []string{"GET /api/tags", "GET /api/ps", "POST /api/embed"} {
		mux.HandleFunc(p, func(w http.ResponseWriter, _ *http.Request) {
			padded(w, `{"models":[`, client.MaxTargetAnswer+over-len(`{"models":[]}`), `]}`)
		})
	}
	mux.HandleFunc("GET /jobs/{id}/artifacts/{name}", func(w http.ResponseWriter, _ *http.Request) {
		padded(w, "", client.MaxTargetAnswer+over, "")
	})
	submitted := `{"job_id":"01JGJ4Q2R0000000000000000A"}`
	mux.HandleFunc("POST /jobs", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		padded(w, submitted[:len(submitted)-1], client.MaxSmallAnswer+over-len(submitted), "}")
	})
	// One NDJSON line longer than the bound, then the end of the answer.
	mux.HandleFunc("POST /api/chat", func(w http.ResponseWriter, _ *http.Request) {
		padded(w, `{"message":{"role":"assistant","content":"x"}`, client.MaxStreamLine+over, `,"done":true}`+"\n")
	})
	// Lines each within the bound, together longer than a whole answer may be.
	mux.HandleFunc("POST /api/generate", func(w http.ResponseWriter, _ *http.Request) {
		line := []byte(`{"response":"x"}` + strings.Repeat(" ", 1<<20) + "\n")
		for n := 0; n <= client.MaxStream+over; n += len(line) {
			if _, err := w.Write(line); err != nil {
				return
			}
		}
		if _, err := io.WriteString(w, `{"response":"","done":true}`+"\n"); err == nil {
			whole.Add(1)
		}
	})
	srv = httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, whole
}

// sizedCall is one of the client's calls whose answers hugeServer makes large.
type sizedCall struct {
	name string
	call func() error
	// ownRead marks the first call of each way the client reads an answer (a whole
	// answer, an artifact, a stream's line, a whole stream); atBound one to which an
	// answer of exactly the bound is valid (a stream's bounds are not reached by a
	// valid answer of one exact size) and not slow to decode.
	ownRead, atBound bool
}

func sizedCalls(ctx context.Context, c *client.Client) []sizedCall {
	const id = "01JGJ4Q2R0000000000000000A"
	return []sizedCall{
		{"Job", func() error { _, err := c.Job(ctx, id); return err }, true, true},
		{"Cancel", func() error { _, err := c.Cancel(ctx, id); return err }, false, true},
		{"Jobs", func() error { _, err := c.Jobs(ctx, client.JobFilter{Limit: 1}); return err }, false, true},
		{"Queue", func() error { _, err := c.Queue(ctx, 1); return err }, false, true},
		{"Tags", func() error { _, err := c.Tags(ctx); return err }, false, false},
		{"Ps", func() error { _, err := c.Ps(ctx); return err }, false, false},
		{"Embed", func() error { _, err := c.Embed(ctx, client.EmbedRequest{Model: "m"}); return err }, false, false},
		{"Artifact", func() error { _, err := c.Artifact(ctx, id, "result.json"); return err }, true, true},
		{"SubmitAsync", func() error { _, err := c.SubmitAsync(ctx, chatJob("m", "hi")); return err }, false, true},
		{"Chat line", func() error { _, err := c.Chat(ctx, client.ChatRequest{Model: "m"}, nil); return err }, true, false},
		{"Generate whole", func() error { _, err := c.Generate(ctx, client.GenerateRequest{Model: "m"}, nil); return err }, true, false},
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
	srv, _ := hugeServer(t, 1)
	for _, s := range sizedCalls(ctx, newClient(t, srv.URL, client.WithPollingOnly())) {
		if err := s.call(); !errors.Is(err, client.ErrAnswerTooLarge) || !strings.Contains(err.Error(), "too large") {
			t.Errorf("%s, one byte over its bound: err = %v; want ErrAnswerTooLarge", s.name, err)
		}
	}

	// An answer 32 MiB over its bound does not fit in the connection's buffers: the
	// server writes it to its end only to a client that reads it all.
	srv, whole := hugeServer(t, 32<<20)
	for _, s := range sizedCalls(ctx, newClient(t, srv.URL, client.WithPollingOnly())) {
		if !s.ownRead {
			continue
		}
		if err := s.call(); !errors.Is(err, client.ErrAnswerTooLarge) {
			t.Errorf("%s, 32 MiB over its bound: err = %v; want ErrAnswerTooLarge", s.name, err)
		}
	}
	srv.Close()
	if n := whole.Load(); n != 0 {
		t.Errorf("%d of the answers 32 MiB over their bounds were read to their end; want each read stopped at its bound", n)
	}

	srv, _ = hugeServer(t, 0)
	for _, s := range sizedCalls(ctx, newClient(t, srv.URL, client.WithPollingOnly())) {
		if !s.atBound {
			continue
		}
		if err := s.call(); err != nil {
			t.Errorf("%s, an answer of exactly its bound: %v; want it read", s.name, err)
		}
	}
}
