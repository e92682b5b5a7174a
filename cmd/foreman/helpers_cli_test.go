package main

import (
	"bytes"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the CLI golden files in testdata/")

// fixedNow is the clock of the golden tests; the fake foreman's data is relative to it.
var fixedNow = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// cliResult is one run of the CLI.
type cliResult struct {
	stdout, stderr string
	code           int
}

// runCLI runs foreman with args, the given environment and stdin, on the fixed clock.
// stdout may be replaced (e.g. by a writer that observes each write).
func runCLI(t *testing.T, vars map[string]string, stdin io.Reader, stdout io.Writer, args ...string) cliResult {
	t.Helper()
	var out, errOut bytes.Buffer
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	w := io.Writer(&out)
	if stdout != nil {
		w = io.MultiWriter(&out, stdout)
	}
	e := &env{
		stdin: stdin, stdout: w, stderr: &errOut,
		getenv: func(k string) string { return vars[k] },
		now:    func() time.Time { return fixedNow },
	}
	code := run(e, args)
	return cliResult{stdout: out.String(), stderr: errOut.String(), code: code}
}

// runCLIWithin is runCLI (no stdin, no observer) for a command that must end within d:
// ok is false when it still runs then (it is left running).
func runCLIWithin(t *testing.T, d time.Duration, vars map[string]string, args ...string) (r cliResult, ok bool) {
	t.Helper()
	done := make(chan cliResult, 1)
	go func() { done <- runCLI(t, vars, nil, nil, args...) }()
	select {
	case r = <-done:
		return r, true
	case <-time.After(d):
		return cliResult{}, false
	}
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (run with -update after checking):\n--- got ---\n%s--- want ---\n%s", path, got, want)
	}
}

// fakeForeman serves fixed answers for the read-only routes the tables show, and checks
// the bearer token when token is set.
func fakeForeman(t *testing.T, token string) string {
	t.Helper()
	routes := map[string]string{
		"GET /api/ps": `{"models":[
			{"name":"llama3.2:latest","model":"llama3.2:latest","size":3600000000,"digest":"a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72","expires_at":"2025-01-02T03:08:05Z","size_vram":3600000000,"context_length":4096},
			{"name":"nomic-embed-text:latest","model":"nomic-embed-text:latest","size":849000000,"digest":"0a109f422b47e3a30ba2b10eca18548e944e8a23073ee3f3e947efcf3c45e59f","expires_at":"2318-01-02T03:04:05Z","size_vram":424500000,"context_length":2048}]}`,
		"GET /api/tags": `{"models":[
			{"name":"llama3.2:latest","model":"llama3.2:latest","modified_at":"2024-12-30T03:04:05Z","size":2019393189,"digest":"a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72"},
			{"name":"qwen2.5:0.5b","model":"qwen2.5:0.5b","modified_at":"2025-01-02T00:04:05Z","size":397821319,"digest":"a8b0c51577010a279d933d14c2a8ab4b268079d44c5c8830c0a93900f1827c67"},
			{"name":"nomic-embed-text:latest","model":"nomic-embed-text:latest","modified_at":"2024-10-02T03:04:05Z","size":274302450,"digest":"0a109f422b47e3a30ba2b10eca18548e944e8a23073ee3f3e947efcf3c45e59f"}]}`,
		"GET /jobs": `{"jobs":[
			{"id":"01JGJ4Q2R0000000000000000C","kind":"chat","model":"llama3.2","state":"queued","attempts":0,"created_at":"2025-01-02T03:04:00Z","started_at":null,"finished_at":null,"error":"","result":null,"artifacts":[]},
			{"id":"01JGJ4Q2R0000000000000000B","kind":"generate","model":"qwen2.5:0.5b","state":"working","attempts":2,"created_at":"2025-01-02T02:58:05Z","started_at":"2025-01-02T03:03:05Z","finished_at":null,"error":"","result":null,"artifacts":[]},
			{"id":"01JGJ4Q2R0000000000000000A","kind":"chat","model":"llama3.2","state":"done","attempts":1,"created_at":"2024-12-31T01:04:05Z","started_at":"2024-12-31T01:04:06Z","finished_at":"2024-12-31T01:04:09Z","error":"","result":null,"artifacts":[{"name":"result.json","content_type":"application/json","size":321,"url":"/jobs/01JGJ4Q2R0000000000000000A/artifacts/result.json"}]}],
			"next_cursor":""}`,
		"GET /jobs/01JGJ4Q2R0000000000000000A": `{"id":"01JGJ4Q2R0000000000000000A","kind":"chat","model":"llama3.2","state":"done","attempts":1,"priority":"low","program":"etl","created_at":"2024-12-31T01:04:05Z","started_at":"2024-12-31T01:04:06Z","finished_at":"2024-12-31T01:04:09Z","error":"",
			"result":{"model":"llama3.2","created_at":"2024-12-31T01:04:09Z","message":{"role":"assistant","content":"The sky is blue because of Rayleigh scattering."},"done":true,"done_reason":"stop"},
			"artifacts":[{"name":"result.json","content_type":"application/json","size":321,"data":"{}"}]}`,
		"GET /jobs/01JGJ4Q2R0000000000000000Z": `{"id":"01JGJ4Q2R0000000000000000Z","kind":"chat","model":"tiny-embed","state":"failed","attempts":1,"priority":"high","program":"","created_at":"2025-01-02T03:03:05Z","started_at":"2025-01-02T03:03:06Z","finished_at":"2025-01-02T03:03:06Z","error":"\"tiny-embed\" does not support chat","result":null,"artifacts":[]}`,
	}
	mux := http.NewServeMux()
	for pattern, body := range routes {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			// A foreman whose clock is the tests' (jobs get takes ages on its Date).
			w.Header().Set("Date", fixedNow.Format(http.TimeFormat))
			_, _ = io.WriteString(w, body)
		})
	}
	// Any other job is unknown, in the gateway's words.
	mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"error":"job not found"}`)
	})
	h := http.Handler(mux)
	if token != "" {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer "+token {
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = io.WriteString(w, `{"error":"unauthorized: missing or wrong bearer token"}`) // the gateway's words
				return
			}
			mux.ServeHTTP(w, r)
		})
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}
