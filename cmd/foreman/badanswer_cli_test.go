package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestBadAnswersFail: an answer that is no job record, or a chat answer without a chunk of
// Ollama's, makes the command fail instead of printing empty fields or waiting forever.
func TestBadAnswersFail(t *testing.T) {
	t.Parallel()
	var reads atomic.Int32
	mux := http.NewServeMux()
	null := func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "null") }
	mux.HandleFunc("DELETE /jobs/{id}", null)
	mux.HandleFunc("POST /api/chat", null)
	mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "later" && reads.Add(1) == 1 {
			// A job that waits, then a record that is none.
			_, _ = io.WriteString(w, `{"id":"later","model":"m","state":"queued"}`)
			return
		}
		_, _ = io.WriteString(w, `{"id":"`+r.PathValue("id")+`","model":"m","state":""}`)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	vars := map[string]string{"FOREMAN_URL": srv.URL}
	for _, args := range [][]string{
		{"jobs", "cancel", "x"},
		{"chat", "-m", "m", "hi"},
		{"jobs", "watch", "x"},
		{"jobs", "watch", "later"},
	} {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			r, ok := runCLIWithin(t, 20*time.Second, vars, args...)
			if !ok {
				t.Fatal("the command still waits on a record without a state")
			}
			if r.code == 0 || !strings.Contains(r.stderr, "foreman: ") {
				t.Fatalf("exit %d, stdout %q, stderr %q; want an error", r.code, r.stdout, r.stderr)
			}
		})
	}
}

// TestWatchAllEndsWhenAPollFailsForGood: `jobs watch` of every job, polling, whose poll
// is refused for good (a token that changed) ends with foreman's error instead of
// printing nothing for ever.
func TestWatchAllEndsWhenAPollFailsForGood(t *testing.T) {
	t.Parallel()
	var polls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path != "/jobs" || polls.Add(1) > 1 {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":"unauthorized"}`)
			return
		}
		_, _ = io.WriteString(w, `{"jobs":[]}`)
	}))
	t.Cleanup(srv.Close)
	r, ok := runCLIWithin(t, 20*time.Second, map[string]string{"FOREMAN_URL": srv.URL}, "jobs", "watch")
	if !ok {
		t.Fatal("the watch still runs after its polls were refused")
	}
	if r.code == 0 || !strings.Contains(r.stderr, "unauthorized") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want foreman's refusal", r.code, r.stdout, r.stderr)
	}
}
