package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// hostileSize is more than the client reads of any answer (its largest bound is 128 MiB).
const hostileSize = 160 << 20

// hugeForeman answers every route the CLI reads with a valid JSON answer of hostileSize
// bytes, most of them white space (cheap to send and to decode): a server whose answers
// have no end as far as the client is concerned.
func hugeForeman(t *testing.T) string {
	t.Helper()
	padded := func(head, tail string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, head)
			pad := bytes.Repeat([]byte(" "), 64<<10)
			for n := 0; n < hostileSize; n += len(pad) {
				if _, err := w.Write(pad); err != nil {
					return // the client stopped reading
				}
			}
			_, _ = io.WriteString(w, tail)
		}
	}
	job := `{"id":"01JGJ4Q2R0000000000000000A","kind":"chat","model":"m","state":"queued"}`
	mux := http.NewServeMux()
	mux.Handle("GET /jobs", padded(`{"jobs":[`+job, `]}`))
	mux.Handle("GET /jobs/{id}", padded(job, ""))
	mux.Handle("GET /queue", padded(`{"queued":[`, `]}`))
	mux.Handle("GET /api/ps", padded(`{"models":[`, `]}`))
	mux.Handle("POST /api/chat", padded(`{"message":{"role":"assistant","content":"x"}`, `,"done":true}`+"\n"))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestHugeAnswers: every command stops reading an answer larger than any foreman sends
// and says so, instead of reading on until the memory is gone.
func TestHugeAnswers(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"FOREMAN_URL": hugeForeman(t)}
	for _, args := range [][]string{
		{"jobs", "list"},
		{"jobs", "get", "01JGJ4Q2R0000000000000000A"},
		{"queue"},
		{"top", "--once"},
		{"ps"},
		{"chat", "-m", "m", "hi"},
	} {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			r := runCLI(t, vars, nil, nil, args...)
			if r.code == 0 || !strings.Contains(r.stderr, "answer is too large") {
				t.Fatalf("exit %d, stderr %q; want an error saying the answer is too large", r.code, r.stderr)
			}
		})
	}
}

// A FOREMAN_TOKEN with a line end (a CRLF env file, a pasted token) is named as the
// fault: the CLI said it could not reach foreman, "is foreman serve running?", since no
// request carrying it could be sent. The token is never quoted.
func TestCLITokenNoHeaderCarries(t *testing.T) {
	t.Parallel()
	url := fakeForeman(t, "s3cret")
	for _, tok := range []string{"s3cret\r", "s3c\nret"} {
		r := runCLI(t, map[string]string{"FOREMAN_URL": url, "FOREMAN_TOKEN": tok}, nil, nil, "ps")
		if r.code != 1 || !strings.Contains(r.stderr, "--token/FOREMAN_TOKEN") || strings.Contains(r.stderr, "cannot reach") || strings.Contains(r.stderr, "s3c") {
			t.Errorf("FOREMAN_TOKEN=%q: exit %d, stderr %q", tok, r.code, r.stderr)
		}
	}
}
