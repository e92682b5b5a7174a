package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// TestDocsAnswerExamplesAreServed keeps the answers the README's curl examples show true
// to a running foreman: each curl of foreman's own routes in a code block whose comment
// lines below it show an answer's JSON (`# 202 {"job_id":"01J..."}`, the /queue view) is
// sent to a foreman with one job running and one waiting, and the answer must have the
// members the example shows, and no member the example leaves out, at its top level.
// Within it, an object the example writes out shows members the answer has; one written
// with "..." may leave some out, and so may one whose keys are no member names (a map
// keyed by model).
func TestDocsAnswerExamplesAreServed(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	examples := readmeAnswerExamples(string(readme))
	if len(examples) < 2 {
		t.Fatalf("only %d curl examples with an answer's JSON found in the README; the reader has lost them", len(examples))
	}

	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	base := "http://" + a.Addr()
	release := fake.Hold("tiny-a")
	defer release()
	for range 2 {
		resp, err := http.Post(base+"/jobs", "application/json",
			strings.NewReader(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
	}
	waitFor(t, "a job running and one waiting", func() bool {
		var q struct {
			Running *json.RawMessage `json:"running"`
			Queued  []any            `json:"queued"`
		}
		resp, err := http.Get(base + "/queue")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(&q) == nil && q.Running != nil && len(q.Queued) == 1
	})

	for _, ex := range examples {
		body := strings.ReplaceAll(ex.body, `"llama3.2"`, `"tiny-a"`)
		req, err := http.NewRequest(ex.method, base+ex.path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(ex.headers); i += 2 {
			req.Header.Set(ex.headers[i], ex.headers[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if ex.status != 0 && resp.StatusCode != ex.status {
			t.Errorf("README: %s: shows %d, foreman answers %d %s", ex.line, ex.status, resp.StatusCode, raw)
			continue
		}
		var got map[string]any
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Errorf("README: %s: the answer is no JSON object: %v: %s", ex.line, err, raw)
			continue
		}
		var shown map[string]any
		if err := json.Unmarshal([]byte(ex.answer), &shown); err != nil {
			t.Fatalf("README: %s: the example answer cannot be read (%v): %s", ex.line, err, ex.answer)
		}
		for _, k := range sortedKeys(got) {
			if _, ok := shown[k]; !ok {
				t.Errorf("README: %s: the example answer leaves out %q, which foreman's has", ex.line, k)
			}
		}
		compareShown(t, ex.line, "", shown, got)
	}
}

// compareShown reports each member an example object shows that the answer's lacks, at
// every depth: an example's member names are the answer's.
func compareShown(t *testing.T, line, at string, shown, got map[string]any) {
	t.Helper()
	for _, k := range sortedKeys(shown) {
		if k == "…" || !memberName.MatchString(k) {
			continue
		}
		g, ok := got[k]
		if !ok {
			t.Errorf("README: %s: the example answer shows %s%q, which foreman's lacks", line, at, k)
			continue
		}
		switch s := shown[k].(type) {
		case map[string]any:
			if gm, ok := g.(map[string]any); ok {
				compareShown(t, line, at+k+".", s, gm)
			}
		case []any:
			if ga, ok := g.([]any); ok && len(s) > 0 && len(ga) > 0 {
				sm, ok1 := s[0].(map[string]any)
				gm, ok2 := ga[0].(map[string]any)
				if ok1 && ok2 {
					compareShown(t, line, at+k+"[0].", sm, gm)
				}
			}
		}
	}
}

// memberName is a JSON member foreman names (snake case); other keys are a map's (models).
var memberName = regexp.MustCompile(`^[a-z][a-z_]*$`)

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// answerExample is a curl of the README followed by comment lines showing its answer.
type answerExample struct {
	line, method, path, body string
	headers                  []string
	status                   int
	answer                   string // the example's JSON, its "..." made JSON
}

// readmeAnswerExamples finds the curl commands of the README's code blocks that call
// foreman's own routes (/jobs, /queue) on :8080 and whose next lines are comments showing
// a JSON answer, optionally after its status: `# 202 {...}`, a view over several `#` lines.
func readmeAnswerExamples(md string) []answerExample {
	var out []answerExample
	lines := strings.Split(md, "\n")
	inBlock := false
	curl := regexp.MustCompile(`^curl (.*?)'?(?:https?://)?(?:localhost|127\.0\.0\.1):8080(/(?:jobs|queue)[^' ]*)'?(.*)$`)
	for i := 0; i < len(lines); i++ {
		if strings.HasPrefix(lines[i], "```") {
			inBlock = !inBlock
			continue
		}
		m := curl.FindStringSubmatch(lines[i])
		if !inBlock || m == nil {
			continue
		}
		ex := answerExample{line: lines[i], method: http.MethodGet, path: m[2]}
		cmd := lines[i]
		for strings.Count(cmd, "'")%2 == 1 && i+1 < len(lines) {
			i++
			cmd += "\n" + lines[i]
		}
		if strings.Contains(cmd, "01J...") {
			continue // names a job
		}
		if b := regexp.MustCompile(`(?s)-d '(.*?)'`).FindStringSubmatch(cmd); b != nil {
			ex.body, ex.method = b[1], http.MethodPost
		}
		for _, h := range regexp.MustCompile(`-H '([^:']+): ([^']*)'`).FindAllStringSubmatch(cmd, -1) {
			ex.headers = append(ex.headers, h[1], h[2])
		}
		var shown strings.Builder
		for i+1 < len(lines) && strings.HasPrefix(lines[i+1], "# ") {
			c := strings.TrimPrefix(lines[i+1], "# ")
			if shown.Len() == 0 {
				st := regexp.MustCompile(`^(\d{3}) +(\{.*)$`).FindStringSubmatch(c)
				if st != nil {
					ex.status, _ = strconv.Atoi(st[1])
					c = st[2]
				}
				if !strings.HasPrefix(c, "{") {
					break
				}
				if j := strings.Index(c, "}   "); j >= 0 {
					c = c[:j+1] // "# 202 {...}   Location: ...": the body only
				}
			}
			shown.WriteString(c)
			i++
			if strings.Count(shown.String(), "{") == strings.Count(shown.String(), "}") {
				break // the JSON is whole: the comments after it say other things
			}
		}
		if shown.Len() == 0 {
			continue
		}
		ex.answer = strings.NewReplacer(",...}", `,"…":0}`, ", ...]", "]", "[...]", "[]").Replace(shown.String())
		out = append(out, ex)
	}
	return out
}
