package main

import (
	"strings"
	"testing"
	"time"
)

// A poll of the own Ollama answered with an error status other than a proxy's 502 or
// 504 (a proxy passing only the model calls answers 401 for the list) is an answer
// (ADR-0057): the worker is not paused and runs jobs on it. The page says the poll was
// answered with an error, not that jobs wait until Ollama answers, nor that a running
// job gets no answer from it.
func TestStatusPageDoesNotSayJobsWaitForAnAnsweredPollInBrowser(t *testing.T) {
	browser := findBrowser(t)
	t.Parallel()
	at := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339) }
	target := `"targets":[{"name":"mac","reachable":false,"loaded":[],"own":true,"error":"ollama: HTTP 401: <b>unauthorized</b>"}]}`
	running := `{"id":"01JGJ4Q2R000000000000000EE","kind":"chat","model":"tiny-a","state":"working","attempts":1,"created_at":"` + at(-time.Minute) +
		`","started_at":"` + at(-30*time.Second) + `","priority":"normal","program":""}`
	for name, run := range map[string]string{"idle": "null", "running": running} {
		queue := `{"running":` + run + `,"loaded":[],"queued":[],"total":0,"depth":{},"running_elsewhere":[],"paused":null,` + target
		dom := headless(t, browser, cannedPage(t, queue, `{"jobs":[]}`)+"/ui/", 3*time.Second)
		box := section(dom, "target-down", "</div>")
		if strings.Contains(box, "hidden") || !strings.Contains(box, "Ollama answered foreman's last poll with an error") ||
			!strings.Contains(box, "&lt;b&gt;unauthorized&lt;/b&gt;") {
			t.Errorf("%s: the page does not say the poll was answered with an error:\n%s", name, box)
		}
		if strings.Contains(box, "jobs wait") || strings.Contains(box, "gets no answer") {
			t.Errorf("%s: the page says jobs wait for an Ollama that answers:\n%s", name, box)
		}
	}
}
