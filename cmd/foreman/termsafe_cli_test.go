package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// evil is text that, printed raw, retitles the terminal window, clears the screen, goes
// back to the start of the line, and uses the C1 forms (NEL, CSI) of such controls.
const evil = "\x1b]0;PWNED\a\x1b[2J\r\u0085\u009b31m"

// evilJSON is evil as a JSON string.
var evilJSON = func() string { b, _ := json.Marshal(evil); return string(b) }()

// evilForeman answers with evil in every field a server sends the CLI.
func evilForeman(t *testing.T) string {
	t.Helper()
	e := evilJSON
	jobOf := func(id string) string {
		return `{"id":` + id + `,"kind":` + e + `,"model":` + e + `,"state":"failed","attempts":2,"created_at":"2025-01-02T03:04:00Z",` +
			`"error":` + e + `,"program":` + e + `,"priority":` + e + `,` +
			`"result":{"message":{"role":"assistant","content":` + e + `}},` +
			`"artifacts":[{"name":` + e + `,"content_type":` + e + `,"size":1}]}`
	}
	job := jobOf(e)
	routes := map[string]string{
		"GET /jobs":          `{"jobs":[` + job + `],"next_cursor":` + e + `}`,
		"GET /jobs/{id}":     job,
		"DELETE /jobs/{id}":  job,
		"POST /jobs":         `{"job_id":` + e + `}`,
		"GET /queue":         `{"running":` + job + `,"loaded":[` + e + `],"total":2,"paused":{"reason":` + e + `,"since":"2025-01-02T03:04:00Z","error":` + e + `},` + `"queued":[{"job_id":` + e + `,"model":` + e + `,"kind":` + e + `,"priority":` + e + `,"program":` + e + `,"created_at":"2025-01-02T03:04:00Z","queue_position":1}]}`,
		"GET /api/ps":        `{"models":[{"name":` + e + `,"digest":` + e + `,"size":1}]}`,
		"GET /api/tags":      `{"models":[{"name":` + e + `,"digest":` + e + `,"size":1}]}`,
		"POST /api/chat":     `{"message":{"role":"assistant","content":` + e + `}}` + "\n" + `{"message":{"role":"assistant","content":"\nline\ttab"},"done":true}` + "\n",
		"GET /jobs/missing/": `{"error":` + e + `}`,
	}
	mux := http.NewServeMux()
	for pattern, body := range routes {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if r.PathValue("id") == "missing" {
				w.WriteHeader(http.StatusNotFound)
				_, _ = io.WriteString(w, `{"error":`+e+`}`)
				return
			}
			if r.Method == http.MethodPost && r.URL.Path == "/jobs" {
				w.WriteHeader(http.StatusAccepted)
			}
			answer := body
			if id := r.PathValue("id"); id != "" && r.Method == http.MethodGet {
				// The record of the job asked for (the answer to a cancel stays another
				// job's, whose id the refusal shows).
				idJSON, _ := json.Marshal(id)
				answer = jobOf(string(idJSON))
			}
			_, _ = io.WriteString(w, answer)
		})
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestServerTextIsEscaped: no text from the server reaches the terminal with its control
// characters: every command shows them escaped, so they cannot act on the terminal.
func TestServerTextIsEscaped(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"FOREMAN_URL": evilForeman(t)}
	for _, args := range [][]string{
		{"jobs", "list"},
		{"jobs", "get", "x"},
		{"jobs", "get", "missing"},
		{"jobs", "cancel", "x"},
		{"jobs", "watch", "x"},
		{"queue"},
		{"top", "--once"},
		{"submit", "-m", "m", "--wait", "hi"},
		{"submit", "-m", "m", "hi"},
		{"ps"},
		{"tags"},
		{"chat", "-m", "m", "hi"},
	} {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			r := runCLI(t, vars, nil, nil, args...)
			out := r.stdout + r.stderr
			if i := strings.IndexFunc(out, func(c rune) bool { return c < 0x20 && c != '\n' && c != '\t' || c >= 0x7f && c < 0xa0 }); i >= 0 {
				t.Fatalf("control character %q printed raw:\nstdout %q\nstderr %q", out[i:i+1], r.stdout, r.stderr)
			}
			if !strings.Contains(out, `\x1b]0;PWNED\a\x1b[2J`) || !strings.Contains(out, `\u0085\u009b31m`) {
				t.Fatalf("the server's text is not shown escaped:\nstdout %q\nstderr %q", r.stdout, r.stderr)
			}
		})
	}
	// Generated text keeps its lines and tabs, and drops carriage returns.
	r := runCLI(t, vars, nil, nil, "chat", "-m", "m", "hi")
	if want := `\x1b]0;PWNED\a\x1b[2J\u0085\u009b31m` + "\nline\ttab\n"; r.stdout != want {
		t.Errorf("chat printed %q, want %q", r.stdout, want)
	}
	// --json stays the JSON the server's record stands for.
	r = runCLI(t, vars, nil, nil, "jobs", "get", "x", "--json")
	var j struct{ Model, Error string }
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil || j.Model != evil || j.Error != evil {
		t.Errorf("jobs get --json: %q (%v); want the record's fields exactly", r.stdout, err)
	}
}

func TestTermSafe(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"llama3.2:latest":     "llama3.2:latest",
		"modèle 日本語 ü":        "modèle 日本語 ü",
		"a\x1b[2Jb":           `a\x1b[2Jb`,
		"tab\there\r\n":       `tab\there\r\n`,
		"c1 \u0085 \u009b":    `c1 \u0085 \u009b`,
		"del \x7f":            `del \x7f`,
		"rtl \u202egnp.exe":   `rtl \u202egnp.exe`,
		"bad \xff utf8":       `bad \xff utf8`,
		`back\slash "quoted"`: `back\slash "quoted"`,
	} {
		if got := termSafe(in); got != want {
			t.Errorf("termSafe(%q) = %q, want %q", in, got, want)
		}
	}
	if got, want := termText("a\r\n\tb\x1bc\u009b"), "a\n\tb\\x1bc\\u009b"; got != want {
		t.Errorf("termText = %q, want %q", got, want)
	}
}
