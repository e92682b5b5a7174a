package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestStatusPageIsolatesBidiTextInBrowser: a value a caller or Ollama chose (a model, a
// program, an error, a runner's name) that holds a bidi override (U+202E) reverses only
// itself: each is a <bdi> of its own. Put in a line beside the page's own words (a job
// another Mac runs: "model · working · 3s id"; a pause's reason: "... for 2m; jobs wait
// until it resumes."), it reversed the rest of that line.
func TestStatusPageIsolatesBidiTextInBrowser(t *testing.T) {
	browser := findBrowser(t)
	t.Parallel()
	const rlo = "\u202e"
	hostile := rlo + "evil.gguf"
	h, _ := json.Marshal(hostile)
	e := string(h)
	at := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339) }
	job := func(id, state string) string {
		return `{"id":"` + id + `","job_id":"` + id + `","kind":` + e + `,"model":` + e + `,"state":"` + state + `","attempts":2,"created_at":"` + at(-time.Minute) +
			`","started_at":"` + at(-30*time.Second) + `","finished_at":"` + at(-time.Second) + `","priority":` + e + `,"program":` + e + `,"error":` + e +
			`,"runner":` + e + `,"queue_position":1,"eta":"` + at(time.Minute) + `"}`
	}
	queue := `{"running":` + job("01JGJ4Q2R000000000000000AA", "working") + `,"loaded":[` + e + `],"total":1,"depth":{` + e + `:1},` +
		`"running_elsewhere":[` + job("01JGJ4Q2R000000000000000BB", "working") + `],` +
		`"paused":{"reason":` + e + `,"since":"` + at(-time.Minute) + `","error":` + e + `},` +
		`"queued":[` + strings.Replace(job("01JGJ4Q2R000000000000000CC", "retrying"), `"finished_at"`, `"x"`, 1) + `],` +
		`"targets":[{"name":` + e + `,"reachable":false,"down_since":"` + at(-time.Minute) + `","error":` + e + `,"own":true}]}`
	base := cannedPage(t, queue, `{"jobs":[`+job("01JGJ4Q2R000000000000000DD", "failed")+`]}`)

	dom := headless(t, browser, base+"/ui/", 3*time.Second)
	body := dom[strings.Index(dom, "<body"):]
	// Attributes (a tooltip, a class) and the chart's tooltips are drawn on their own.
	body = regexp.MustCompile(`="[^"]*"`).ReplaceAllString(body, `=""`)
	body = regexp.MustCompile(`<title>[^<]*</title>`).ReplaceAllString(body, "")
	n := 0
	for i := strings.Index(body, rlo); i >= 0; i = next(body, rlo, i) {
		n++
		tag := body[strings.LastIndex(body[:i], "<"):i]
		if !strings.HasPrefix(tag, "<bdi") || !strings.HasSuffix(tag, ">") {
			t.Errorf("a value with a bidi override is not a <bdi> of its own, but in %q: …%s…", tag, body[max(i-150, 0):min(i+50, len(body))])
		}
	}
	// The running job (model, program, kind, id), another Mac's job (runner, model), the
	// pause (reason, error), Ollama's error, a loaded model, the queue's and the recent
	// jobs' rows, the chart's legend.
	if n < 15 {
		t.Errorf("the override shows %d times, want every field:\n%s", n, body)
	}
	screenshot(t, browser, base+"/ui/", "bidi")
}

// next is the index of sub in s after the one at i, or -1.
func next(s, sub string, i int) int {
	j := strings.Index(s[i+len(sub):], sub)
	if j < 0 {
		return -1
	}
	return i + len(sub) + j
}
