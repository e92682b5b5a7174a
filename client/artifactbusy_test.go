package client_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// A done job whose result is an artifact is read even while foreman sends as many
// artifact bodies as it will at once: its 503 with Retry-After is waited out, not handed
// to a caller who would take the finished job for a failed one (ADR-0065).
func TestWaitReadsAResultPastABusyArtifactRoute(t *testing.T) {
	t.Parallel()
	const id = "01JGJ4Q2R0000000000000000A"
	const result = `{"model":"tiny-a","message":{"role":"assistant","content":"big answer"},"done":true}`
	var refused, served atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/jobs/" + id:
			_, _ = io.WriteString(w, `{"id":"`+id+`","kind":"chat","model":"tiny-a","state":"done","attempts":1,`+
				`"created_at":"2025-01-02T03:04:05Z","result":null,"artifacts":[{"name":"result.json",`+
				`"content_type":"application/json","size":300000,"url":"/jobs/`+id+`/artifacts/result.json"}]}`)
		case "/jobs/" + id + "/artifacts/result.json":
			if refused.Add(1) <= 2 {
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, `{"error":"too many artifact downloads: foreman sends at most 64 artifact bodies at once; retry shortly"}`)
				return
			}
			served.Add(1)
			_, _ = io.WriteString(w, result)
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"error":"not found"}`)
		}
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, client.WithPollingOnly())
	res, err := c.Wait(testCtx(t), id)
	if err != nil {
		t.Fatalf("wait for a done job whose artifact route is busy twice: %v", err)
	}
	if string(res.Body) != result || served.Load() != 1 || refused.Load() != 3 {
		t.Errorf("result %q after %d refusals, %d reads; want the artifact after 2 refusals", res.Body, refused.Load()-1, served.Load())
	}
}

// A done job's result artifact whose read fails for now, cut short in the middle of its
// body (foreman closes the connection when its store's read fails while it serves one)
// or refused by a proxy while foreman restarts, is read again: Submit and Wait failing
// there would have their caller take a done job for a failed one and submit it again.
func TestWaitReadsAResultAgainAfterATransientFault(t *testing.T) {
	t.Parallel()
	const id = "01JGJ4Q2R0000000000000000A"
	result := `{"model":"tiny-a","message":{"role":"assistant","content":"` + strings.Repeat("big answer ", 30000) + `"},"done":true}`
	for name, fail := range map[string]func(w http.ResponseWriter){
		"cut short": func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", strconv.Itoa(len(result)))
			_, _ = io.WriteString(w, result[:1000])
			w.(http.Flusher).Flush()    // the answer has begun
			panic(http.ErrAbortHandler) // the connection is closed short of Content-Length
		},
		"bad gateway": func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, `{"error":"foreman is restarting"}`)
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var reads atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "application/json")
				switch r.URL.Path {
				case "/jobs/" + id:
					_, _ = fmt.Fprintf(w, `{"id":"`+id+`","kind":"chat","model":"tiny-a","state":"done","attempts":1,`+
						`"created_at":"2025-01-02T03:04:05Z","artifacts":[{"name":"result.json",`+
						`"content_type":"application/json","size":%d,"url":"/jobs/`+id+`/artifacts/result.json"}]}`, len(result))
				case "/jobs/" + id + "/artifacts/result.json":
					if reads.Add(1) == 1 {
						fail(w)
						return
					}
					_, _ = io.WriteString(w, result)
				default:
					w.WriteHeader(http.StatusNotFound)
					_, _ = io.WriteString(w, `{"error":"not found"}`)
				}
			}))
			t.Cleanup(srv.Close)
			c := newClient(t, srv.URL, client.WithPollingOnly(), client.WithPollInterval(20*time.Millisecond))
			res, err := c.Wait(testCtx(t), id)
			if err != nil {
				t.Fatalf("wait for a done job whose result's first read failed for now: %v", err)
			}
			if string(res.Body) != result || reads.Load() != 2 {
				t.Errorf("result of %d bytes after %d reads; want the artifact's %d bytes at the second read", len(res.Body), reads.Load(), len(result))
			}
		})
	}
}
