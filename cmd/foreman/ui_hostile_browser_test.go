package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The status page shows every text a job, a target or a pause carries as text, whatever
// it holds: markup does not become elements, and a script in it does not run (the page's
// title would change).
func TestStatusPageShowsHostileTextAsTextInBrowser(t *testing.T) {
	browser := findBrowser(t)
	t.Parallel()
	const hostile = `<img src=x onerror="document.title='PWNED'"><script>document.title='PWNED'</script>"'&amp;`
	h, _ := json.Marshal(hostile)
	e := string(h)
	at := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339) }
	job := func(id, state string) string {
		return `{"id":"` + id + `","job_id":"` + id + `","kind":` + e + `,"model":` + e + `,"state":"` + state + `","attempts":2,"created_at":"` + at(-time.Minute) +
			`","started_at":"` + at(-30*time.Second) + `","finished_at":"` + at(-time.Second) + `","priority":` + e + `,"program":` + e + `,"error":` + e +
			`,"runner":` + e + `,"queue_position":1,"eta":"` + at(time.Minute) + `"}`
	}
	queue := `{"running":` + job("01JGJ4Q2R000000000000000AA", "working") + `,"loaded":[` + e + `],"total":1,"depth":{` + e + `:1,"__proto__":2},` +
		`"running_elsewhere":[` + job("01JGJ4Q2R000000000000000BB", "working") + `],` +
		`"paused":{"reason":` + e + `,"since":"` + at(-time.Minute) + `","error":` + e + `},` +
		`"queued":[` + strings.Replace(job("01JGJ4Q2R000000000000000CC", "retrying"), `"finished_at"`, `"x"`, 1) + `],` +
		`"targets":[{"name":` + e + `,"reachable":false,"down_since":"` + at(-time.Minute) + `","error":` + e + `,"own":true}]}`
	base := cannedPage(t, queue, `{"jobs":[`+job("01JGJ4Q2R000000000000000DD", "failed")+`]}`)

	dom := headless(t, browser, base+"/ui/", 3*time.Second)
	if !strings.Contains(dom, "<title>foreman</title>") {
		t.Errorf("a script in the data ran (the title changed):\n%s", dom)
	}
	body := dom[strings.Index(dom, "<body"):]
	if regexp.MustCompile(`<img|<script`).MatchString(body) {
		t.Errorf("markup in the data became elements:\n%s", body)
	}
	for id, end := range map[string]string{"running": "</dl>", "queue-rows": "</tbody>", "recent-rows": "</tbody>", "paused": "</div>", "elsewhere": "</ul>", "target-down": "</div>", "loaded": "</ul>"} {
		if s := section(dom, id, end); !strings.Contains(s, "&lt;img src=x") {
			t.Errorf("section %s does not show the text as text:\n%s", id, s)
		}
	}
	screenshot(t, browser, base+"/ui/", "hostile")
}
