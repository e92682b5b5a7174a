package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// `top` shows foreman's URL with its credentials redacted, as every other message does.
func TestTopHidesTheURLsPassword(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /queue", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"running":null,"loaded":[],"queued":[],"total":0,"depth":{}}`)
	})
	mux.HandleFunc("GET /jobs", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"jobs":[],"next_cursor":""}`)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	u := strings.Replace(srv.URL, "http://", "http://admin:"+testPassword+"@", 1)
	r := runCLI(t, map[string]string{"FOREMAN_URL": u}, nil, nil, "top", "--once")
	if r.code != 0 {
		t.Fatalf("top --once: exit %d, stderr %q", r.code, r.stderr)
	}
	if strings.Contains(r.stdout, testPassword) {
		t.Errorf("top --once shows the URL's password:\n%s", r.stdout)
	}
}

// `submit --wait --json` prints the job's record with its result, also one too large for
// GET /jobs/{id} to embed (over 256 KiB), which Submit reads from the artifact.
func TestSubmitWaitJSONKeepsALargeResult(t *testing.T) {
	t.Parallel()
	const id = "01JFAULT000000000000000002"
	big := strings.Repeat("x", 300<<10)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /jobs", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"job_id":"`+id+`"}`)
	})
	// What foreman's jobView answers for a done job whose result.json is over 256 KiB.
	mux.HandleFunc("GET /jobs/"+id, func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"id":"`+id+`","kind":"chat","model":"m","state":"done","attempts":1,"created_at":"2025-01-02T03:04:05Z",`+
			`"artifacts":[{"name":"result.json","content_type":"application/json","size":307300,"url":"/jobs/`+id+`/artifacts/result.json"}]}`)
	})
	mux.HandleFunc("GET /jobs/"+id+"/artifacts/result.json", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"model":"m","message":{"role":"assistant","content":"`+big+`"},"done":true}`)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	vars := map[string]string{"FOREMAN_URL": srv.URL}
	if r := runCLI(t, vars, nil, nil, "submit", "-m", "m", "--wait", "hi"); r.code != 0 || !strings.Contains(r.stdout, big) {
		t.Fatalf("submit --wait: exit %d, %d bytes out, stderr %q", r.code, len(r.stdout), r.stderr)
	}
	r := runCLI(t, vars, nil, nil, "submit", "-m", "m", "--wait", "--json", "hi")
	if r.code != 0 || !strings.Contains(r.stdout, big) {
		t.Errorf("submit --wait --json: exit %d, the result is missing from stdout (%d bytes):\n%.600s", r.code, len(r.stdout), r.stdout)
	}
}

// The same against a real foreman: num_predict makes the fake Ollama answer some 60000
// words, a result over 256 KiB.
func TestSubmitWaitJSONKeepsALargeResultOfARealForeman(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	vars := map[string]string{"FOREMAN_URL": "http://" + a.Addr()}
	body := `{"model":"tiny-a","messages":[{"role":"user","content":"long"}],"options":{"num_predict":60000}}`
	r := runCLI(t, vars, strings.NewReader(body), nil, "submit", "--file", "-", "--wait")
	if r.code != 0 || len(r.stdout) < 256<<10 {
		t.Fatalf("submit --wait: exit %d, %d bytes out, stderr %.300q", r.code, len(r.stdout), r.stderr)
	}
	text := strings.TrimSpace(r.stdout)
	r = runCLI(t, vars, strings.NewReader(body), nil, "submit", "--file", "-", "--wait", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, text[:200]) {
		t.Errorf("submit --wait --json: exit %d; the %d-byte result is missing from stdout (%d bytes):\n%.900s", r.code, len(text), len(r.stdout), r.stdout)
	}
}
