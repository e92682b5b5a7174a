package client_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// Wait reads a done job's result.json as the job's program: foreman gives each program
// its share of the artifact downloads (ADR-0126), and without named tokens it knows a
// read's program only from X-Foreman-Program. A job of no program sends none.
func TestWaitReadsTheResultArtifactAsTheJobsProgram(t *testing.T) {
	t.Parallel()
	const id = "01JGJ4Q2R0000000000000000A"
	const result = `{"model":"tiny-a","message":{"role":"assistant","content":"big answer"},"done":true}`
	for _, program := range []string{"alpha", ""} {
		var (
			mu   sync.Mutex
			sent []string
		)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			switch r.URL.Path {
			case "/jobs/" + id:
				member := ""
				if program != "" {
					member = `"program":"` + program + `",`
				}
				_, _ = io.WriteString(w, `{"id":"`+id+`","kind":"chat","model":"tiny-a","state":"done","attempts":1,`+member+
					`"created_at":"2025-01-02T03:04:05Z","artifacts":[{"name":"result.json",`+
					`"content_type":"application/json","size":300000,"url":"/jobs/`+id+`/artifacts/result.json"}]}`)
			case "/jobs/" + id + "/artifacts/result.json":
				mu.Lock()
				sent = append(sent, r.Header.Values("X-Foreman-Program")...)
				mu.Unlock()
				_, _ = io.WriteString(w, result)
			default:
				w.WriteHeader(http.StatusNotFound)
				_, _ = io.WriteString(w, `{"error":"not found"}`)
			}
		}))
		c := newClient(t, srv.URL, client.WithPollingOnly())
		res, err := c.Wait(testCtx(t), id)
		srv.Close()
		if err != nil || string(res.Body) != result {
			t.Fatalf("program %q: wait: %v", program, err)
		}
		mu.Lock()
		want := []string{program}
		if program == "" {
			want = nil
		}
		if len(sent) != len(want) || len(want) > 0 && sent[0] != want[0] {
			t.Errorf("program %q: result.json read with X-Foreman-Program %q, want %q", program, sent, want)
		}
		mu.Unlock()
	}
}
