package gateway

import (
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestREADMERoutesAreServed keeps the routes the README names true to the route table:
// each `METHOD /path` it writes, and each curl of its examples, is taken by a route of
// its own (not the catch-all's 404, nor a 405 for another method). A curl of foreman's
// own routes (/jobs, /queue) that names no job is also sent as written (its model
// swapped for one the fake Ollama has), headers, query and body included, and must not
// be refused as bad input.
func TestREADMERoutesAreServed(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	b := newTestBundle(t)
	routed := func(method, target string) bool {
		req := httptest.NewRequest(method, target, nil)
		_, pattern := b.GW.mux.Handler(req)
		return pattern != "" && pattern != "/"
	}

	named := regexp.MustCompile("`((?:GET|HEAD|POST|PUT|PATCH|DELETE)(?:\\|(?:GET|HEAD|POST|PUT|PATCH|DELETE))*) (/[^` ]*)`")
	checked := 0
	for _, m := range named.FindAllStringSubmatch(string(readme), -1) {
		for _, method := range strings.Split(m[1], "|") {
			checked++
			if !routed(method, readmePath(m[2])) {
				t.Errorf("README names `%s %s`, which no route takes", method, m[2])
			}
		}
	}
	if checked < 20 {
		t.Errorf("only %d `METHOD /path` found in the README; the reader has lost them", checked)
	}

	curls := readmeCurls(string(readme))
	if len(curls) < 8 {
		t.Fatalf("only %d curl examples found in the README; the reader has lost them", len(curls))
	}
	for _, c := range curls {
		path := readmePath(c.path)
		if !routed(c.method, path) {
			t.Errorf("README: %s: %s %s is no route", c.line, c.method, c.path)
			continue
		}
		if path != c.path || !strings.HasPrefix(path, "/jobs") && !strings.HasPrefix(path, "/queue") {
			continue // names a job that is not there, or waits for a worker the bundle lacks
		}
		body := strings.ReplaceAll(c.body, `"llama3.2"`, `"tiny-a"`)
		var raw []byte
		if c.body != "" {
			raw = []byte(body)
		}
		resp, out := b.request(t, c.method, path, raw, c.headers...)
		switch resp.StatusCode {
		case http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusUnprocessableEntity:
			t.Errorf("README: %s: foreman answers %d %s", c.line, resp.StatusCode, out)
		}
	}
}

// readmeCurl is one curl command of the README's code blocks.
type readmeCurl struct {
	line    string // its first line, to name it
	method  string
	path    string // path and query
	headers []string
	body    string
}

// readmeCurls are the curl commands of the README's code blocks that call foreman on
// :8080, a body quoted over several lines read whole.
func readmeCurls(md string) []readmeCurl {
	var out []readmeCurl
	inBlock := false
	lines := strings.Split(md, "\n")
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if strings.HasPrefix(line, "```") {
			inBlock = !inBlock
			continue
		}
		if !inBlock || !strings.HasPrefix(line, "curl ") {
			continue
		}
		cmd := line
		for strings.Count(cmd, "'")%2 == 1 && i+1 < len(lines) {
			i++
			cmd += "\n" + lines[i]
		}
		if c, ok := parseCurl(cmd); ok {
			c.line = line
			out = append(out, c)
		}
	}
	return out
}

// parseCurl reads the method, target, headers and body of one curl command line as a
// shell would split it (single and double quotes; a # outside them starts a comment).
func parseCurl(cmd string) (readmeCurl, bool) {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range cmd {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == '#' && !inWord:
			goto done
		case r == ' ' || r == '\t' || r == '\n' || r == '\\':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
done:
	if inWord {
		words = append(words, cur.String())
	}
	c := readmeCurl{}
	for i := 1; i < len(words); i++ {
		switch w := words[i]; {
		case w == "-X" && i+1 < len(words):
			i++
			c.method = words[i]
		case w == "-H" && i+1 < len(words):
			i++
			name, value, _ := strings.Cut(words[i], ":")
			if !strings.EqualFold(name, "Authorization") {
				c.headers = append(c.headers, name, strings.TrimSpace(value))
			}
		case w == "-d" && i+1 < len(words):
			i++
			c.body = words[i]
		case strings.Contains(w, ":8080/"):
			c.path = w[strings.Index(w, ":8080/")+len(":8080"):]
		}
	}
	if c.path == "" {
		return c, false
	}
	if c.method == "" {
		c.method = http.MethodGet
		if c.body != "" {
			c.method = http.MethodPost
		}
	}
	return c, true
}

// readmePath fills the placeholders of a path the README writes ({id}, 01J..., …) with
// values a route's wildcard takes.
func readmePath(p string) string {
	return strings.NewReplacer(
		"{id}", "01J0000000000000000000000Z", "01J...", "01J0000000000000000000000Z",
		"{name}", "result.json", "{digest}", "sha256-0", "{model}", "m", "{model...}", "m", "…", "0",
	).Replace(p)
}
