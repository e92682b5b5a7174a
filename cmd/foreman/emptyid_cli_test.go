package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// An empty job id (`foreman jobs watch "$ID"` with ID unset) followed every job for as
// long as the command ran, and get or cancel asked for a path that is no job's: each is
// refused before any request.
func TestEmptyJobIDRefused(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"jobs":[]}`))
	}))
	t.Cleanup(srv.Close)
	vars := map[string]string{"FOREMAN_URL": srv.URL}
	for _, args := range [][]string{
		{"jobs", "watch", ""},
		{"jobs", "watch", " "},
		{"jobs", "get", ""},
		{"jobs", "cancel", ""},
		{"jobs", "get", ".."},
		{"jobs", "cancel", "."},
	} {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			before := requests.Load()
			r, ok := runCLIWithin(t, 20*time.Second, vars, args...)
			if !ok {
				t.Fatal("the command still runs: it follows every job")
			}
			if r.code == 0 || !strings.Contains(r.stderr, "foreman: ") {
				t.Errorf("exit %d, stdout %q, stderr %q; want an error", r.code, r.stdout, r.stderr)
			}
			if n := requests.Load() - before; n != 0 {
				t.Errorf("%d requests made for an id that is none", n)
			}
		})
	}
}
