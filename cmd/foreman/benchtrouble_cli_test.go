package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// `bench chat` says a side it cannot use in the words the other commands use: a refused
// connection with its hint, not Go's `Post "…": dial tcp …`; foreman's refusal as a
// sentence with what to do, not its JSON (`401 {"error":"unauthorized: …"}`); a page
// that is no foreman's as such. (The fake Ollama stands for foreman where only its
// answer to a chat matters.)
func TestBenchChatSaysWhatFailed(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	page := notFoundPage(t)
	down := "http://" + closedPort(t)
	for _, tc := range []struct {
		name, url, direct string
		want              []string
	}{
		{"foreman down", down, fake.URL, []string{"cannot reach " + down + ": connection refused", `is "foreman serve" running?`}},
		{"no token", fakeForeman(t, "tok"), fake.URL, []string{"401 Unauthorized: missing or wrong bearer token", "set FOREMAN_TOKEN or --token"}},
		{"not foreman", page.URL, fake.URL, []string{page.URL + " answered 404 Not Found with \"<html>", "which does not look like foreman"}},
		{"ollama down", fake.URL, down, []string{"cannot reach " + down + ": connection refused", "--direct"}},
	} {
		r := runCLI(t, map[string]string{"FOREMAN_URL": tc.url}, nil, nil, "bench", "chat", "--direct", tc.direct, "-m", "tiny-a", "-n", "1", "--warmup", "0")
		for _, w := range tc.want {
			if r.code != 1 || !strings.Contains(r.stderr, w) {
				t.Errorf("%s: exit %d, stderr %q; want exit 1 and %q", tc.name, r.code, r.stderr, w)
			}
		}
		for _, bad := range []string{`{"error"`, "dial tcp", `Post "`} {
			if strings.Contains(r.stderr, bad) {
				t.Errorf("%s: stderr %q has %q", tc.name, r.stderr, bad)
			}
		}
	}
}

// `bench submit` that had no submit accepted says why as the other commands do: the
// first error was Go's `Post "…": dial tcp …`, and a refusal was only its status
// (`401: 3`), with nothing of foreman's words or what to do.
func TestBenchSubmitSaysWhatFailed(t *testing.T) {
	t.Parallel()
	page := notFoundPage(t)
	down := "http://" + closedPort(t)
	for _, tc := range []struct {
		name, url string
		want      []string
	}{
		{"foreman down", down, []string{"cannot reach " + down + ": connection refused", `is "foreman serve" running?`}},
		{"no token", fakeForeman(t, "tok"), []string{"401 Unauthorized: missing or wrong bearer token", "set FOREMAN_TOKEN or --token"}},
		{"not foreman", page.URL, []string{page.URL + " answered 404 Not Found with \"<html>", "which does not look like foreman"}},
	} {
		r := runCLI(t, map[string]string{"FOREMAN_URL": tc.url}, nil, nil, "bench", "submit", "-n", "2", "--callers", "1")
		for _, w := range tc.want {
			if r.code != 1 || !strings.Contains(r.stderr, w) {
				t.Errorf("%s: exit %d, stderr %q; want exit 1 and %q", tc.name, r.code, r.stderr, w)
			}
		}
		for _, bad := range []string{`{"error"`, "dial tcp", `Post "`} {
			if strings.Contains(r.stderr+r.stdout, bad) {
				t.Errorf("%s: output %q %q has %q", tc.name, r.stdout, r.stderr, bad)
			}
		}
	}
}

// notFoundPage is a server that is not foreman: a 404 HTML page for every request.
func notFoundPage(t *testing.T) *httptest.Server {
	t.Helper()
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, "<html><body><h1>Not Found</h1></body></html>")
	}))
	t.Cleanup(page.Close)
	return page
}
