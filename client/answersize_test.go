package client_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
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

// hugeServer answers every route with a valid answer one byte larger than the client's
// bound on it.
func hugeServer(t *testing.T) string {
	t.Helper()
	job := `{"id":"01JGJ4Q2R0000000000000000A","kind":"chat","model":"m","state":"queued"}`
	mux := http.NewServeMux()
	mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, _ *http.Request) {
		writePadded(w, "", client.MaxJobAnswer+1-len(job), job)
	})
	mux.HandleFunc("DELETE /jobs/{id}", func(w http.ResponseWriter, _ *http.Request) {
		writePadded(w, "", client.MaxJobAnswer+1-len(job), job)
	})
	mux.HandleFunc("GET /jobs", func(w http.ResponseWriter, _ *http.Request) {
		// Jobs asks for a page of 1.
		writePadded(w, `{"jobs":[`, client.MaxListBase+client.MaxListEntry+1-len(`{"jobs":[]}`), `]}`)
	})
	mux.HandleFunc("GET /queue", func(w http.ResponseWriter, _ *http.Request) {
		// Queue asks for 1 waiting job.
		writePadded(w, `{"queued":[`, client.MaxListBase+client.MaxQueueEntry+1-len(`{"queued":[]}`), `]}`)
	})
	for _, p := range []string{"GET /api/tags", "GET /api/ps", "POST /api/embed"} {
		mux.HandleFunc(p, func(w http.ResponseWriter, _ *http.Request) {
			writePadded(w, `{"models":[`, client.MaxTargetAnswer+1-len(`{"models":[]}`), `]}`)
		})
	}
	mux.HandleFunc("GET /jobs/{id}/artifacts/{name}", func(w http.ResponseWriter, _ *http.Request) {
		writePadded(w, "", client.MaxTargetAnswer+1, "")
	})
	mux.HandleFunc("POST /jobs", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		writePadded(w, `{"job_id":"01JGJ4Q2R0000000000000000A"`, client.MaxSmallAnswer+1, "}")
	})
	// One NDJSON line longer than the bound, then the end of the answer.
	mux.HandleFunc("POST /api/chat", func(w http.ResponseWriter, _ *http.Request) {
		writePadded(w, `{"message":{"role":"assistant","content":"x"}`, client.MaxStreamLine+1, `,"done":true}`+"\n")
	})
	// Lines each within the bound, together longer than a whole answer may be.
	mux.HandleFunc("POST /api/generate", func(w http.ResponseWriter, _ *http.Request) {
		line := []byte(`{"response":"x"}` + strings.Repeat(" ", 1<<20) + "\n")
		for n := 0; n <= client.MaxStream; n += len(line) {
			if _, err := w.Write(line); err != nil {
				return
			}
		}
		_, _ = io.WriteString(w, `{"response":"","done":true}`+"\n")
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestAnswerTooLarge: no answer of a server is read without bound. One larger than any
// foreman sends fails with ErrAnswerTooLarge instead of filling the client's memory.
func TestAnswerTooLarge(t *testing.T) {
	t.Parallel()
	c := newClient(t, hugeServer(t), client.WithPollingOnly())
	const id = "01JGJ4Q2R0000000000000000A"
	// Not testCtx: reading an answer of up to 256 MiB takes longer than its 30 s on a
	// loaded machine under -race, and the bound tested is one of size, not time (a call
	// cut by its deadline fails with the context's error). A call that hangs is stopped
	// by go test's -timeout.
	ctx := t.Context()
	for name, call := range map[string]func() error{
		"Job":    func() error { _, err := c.Job(ctx, id); return err },
		"Cancel": func() error { _, err := c.Cancel(ctx, id); return err },
		"Jobs":   func() error { _, err := c.Jobs(ctx, client.JobFilter{Limit: 1}); return err },
		"Queue":  func() error { _, err := c.Queue(ctx, 1); return err },
		"Tags":   func() error { _, err := c.Tags(ctx); return err },
		"Ps":     func() error { _, err := c.Ps(ctx); return err },
		"Embed": func() error {
			_, err := c.Embed(ctx, client.EmbedRequest{Model: "m"})
			return err
		},
		"Artifact":    func() error { _, err := c.Artifact(ctx, id, "result.json"); return err },
		"SubmitAsync": func() error { _, err := c.SubmitAsync(ctx, chatJob("m", "hi")); return err },
		"Chat line": func() error {
			_, err := c.Chat(ctx, client.ChatRequest{Model: "m"}, nil)
			return err
		},
		"Generate whole": func() error {
			_, err := c.Generate(ctx, client.GenerateRequest{Model: "m"}, nil)
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			err := call()
			if !errors.Is(err, client.ErrAnswerTooLarge) || !strings.Contains(err.Error(), "too large") {
				t.Fatalf("err = %v; want ErrAnswerTooLarge", err)
			}
		})
	}
}
