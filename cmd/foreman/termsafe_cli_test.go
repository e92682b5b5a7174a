package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// evil is text that, printed raw, retitles the terminal window, clears the screen, goes
// back to the start of the line, and uses the C1 forms (NEL, CSI) of such controls.
const evil = "\x1b]0;PWNED\a\x1b[2J\r\u0085\u009b31m"

// evilForeman answers with evil in every field a server sends the CLI.
func evilForeman(t *testing.T) string {
	t.Helper()
	return evilForemanWith(t, evil)
}

// evilForemanWith answers with text in every field a server sends the CLI.
func evilForemanWith(t *testing.T, text string) string {
	t.Helper()
	b, _ := json.Marshal(text)
	e := string(b)
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
		"POST /api/chat":     `{"model":"m","message":{"role":"assistant","content":` + e + `}}` + "\n" + `{"model":"m","message":{"role":"assistant","content":"\nline\ttab"},"done":true}` + "\n",
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

// TestJSONOutputIsTerminalSafe: --json output, which people read on a terminal too, sends
// no control character, bidi override or other unprintable character of the server's
// text raw (encoding/json writes C1 controls and U+202E as they are), and stands for the
// same JSON: the text decodes back whole.
func TestJSONOutputIsTerminalSafe(t *testing.T) {
	t.Parallel()
	const hostile = evil + "\u202egnp.exe\u2066\x7f\U000e0041"
	vars := map[string]string{"FOREMAN_URL": evilForemanWith(t, hostile)}
	for _, args := range [][]string{
		{"jobs", "list", "--json"},
		{"jobs", "get", "x", "--json"},
		{"jobs", "watch", "x", "--json"},
		{"queue", "--json"},
		{"top", "--once", "--json"},
		{"submit", "-m", "m", "--wait", "--json", "hi"},
		{"submit", "-m", "m", "--json", "hi"},
		{"ps", "--json"},
		{"tags", "--json"},
	} {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			r := runCLI(t, vars, nil, nil, args...)
			out := r.stdout + r.stderr
			if i := strings.IndexFunc(out, func(c rune) bool { return c != '\n' && c != '\t' && !strconv.IsGraphic(c) }); i >= 0 {
				c, _ := utf8.DecodeRuneInString(out[i:])
				t.Fatalf("%U printed raw:\nstdout %q\nstderr %q", c, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stdout, `\u009b31m\u202egnp.exe\u2066\u007f\udb40\udc41`) {
				t.Fatalf("the server's text is not in the JSON escaped:\nstdout %q\nstderr %q", r.stdout, r.stderr)
			}
			// Still JSON (one value, or one per line for watch) holding the text whole.
			dec := json.NewDecoder(strings.NewReader(r.stdout))
			found := false
			for {
				var v any
				if err := dec.Decode(&v); err == io.EOF {
					break
				} else if err != nil {
					t.Fatalf("not JSON: %v\n%s", err, r.stdout)
				}
				found = found || holds(v, hostile)
			}
			if !found {
				t.Fatalf("the JSON does not hold the server's text whole:\n%s", r.stdout)
			}
		})
	}
}

// holds reports whether JSON value v has the string s somewhere in it.
func holds(v any, s string) bool {
	switch v := v.(type) {
	case string:
		return v == s
	case []any:
		for _, e := range v {
			if holds(e, s) {
				return true
			}
		}
	case map[string]any:
		for _, e := range v {
			if holds(e, s) {
				return true
			}
		}
	}
	return false
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

func TestTermJSON(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		`{"a":"llama3 日本語 ü","b":[1, 2]}` + "\n": `{"a":"llama3 日本語 ü","b":[1, 2]}` + "\n",
		"{\r\n\t\"a\": \"x\"\r\n}":               "{\n\t\"a\": \"x\"\n}",
		`"c1 ` + "\u0085\u009b" + `"`:            `"c1 \u0085\u009b"`,
		`"rtl ` + "\u202e\u2066\u200b\x7f" + `"`: `"rtl \u202e\u2066\u200b\u007f"`,
		`"tag ` + "\U000e0041" + `"`:             `"tag \udb40\udc41"`,
		`"bad ` + "\xff" + `"`:                   `"bad \ufffd"`,
		`"kept \u001b \\ \""`:                    `"kept \u001b \\ \""`,
	} {
		got := string(termJSON([]byte(in)))
		if got != want {
			t.Errorf("termJSON(%q) = %q, want %q", in, got, want)
		}
		var a, b any
		if json.Unmarshal([]byte(in), &a) != nil || json.Unmarshal([]byte(got), &b) != nil {
			t.Errorf("termJSON(%q) = %q: not JSON", in, got)
		} else if ja, _ := json.Marshal(a); string(ja) != string(mustMarshal(t, b)) {
			t.Errorf("termJSON(%q) = %q stands for other JSON", in, got)
		}
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
