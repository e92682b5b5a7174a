package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/ui"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// cannedPage serves the status page's files with canned answers of the API it polls:
// queue for GET /queue and jobs for GET /jobs (no /metrics: the page counts loads itself).
func cannedPage(t *testing.T, queue, jobs string) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("GET /ui/", ui.Handler())
	for path, body := range map[string]string{"/queue": queue, "/jobs": jobs} {
		mux.HandleFunc("GET "+path, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, body)
		})
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// screenshot saves the page at FOREMAN_UI_SCREENSHOT-<name>.png when that is set.
func screenshot(t *testing.T, browser, url, name string) {
	t.Helper()
	if path := os.Getenv("FOREMAN_UI_SCREENSHOT"); path != "" {
		abs, _ := filepath.Abs(strings.TrimSuffix(path, ".png") + "-" + name + ".png")
		headless(t, browser, url, 3*time.Second, "--screenshot="+abs)
		t.Logf("screenshot (%s) in %s", name, abs)
	}
}

// A worker paused by a store fault that only a restart ends (restart_needed, ADR-0041)
// is not shown as a pause that passes: the banner says foreman must be restarted, and
// the error stays text. The recent jobs are listed by their end, newest first, as the
// Finished column reads, whatever order they were created in.
func TestStatusPageSaysARestartIsNeededInBrowser(t *testing.T) {
	browser := findBrowser(t)
	t.Parallel()
	since := time.Now().Add(-3 * time.Minute).UTC().Format(time.RFC3339)
	queue := `{"running":null,"loaded":[],"queued":[],"total":0,"depth":{},"running_elsewhere":[],` +
		`"paused":{"reason":"store_refuses_writes","since":"` + since + `","error":"broker: probe write: job store cannot write until foreman restarts (the store's fault: <b>write error</b>: no space left on device)","restart_needed":true},` +
		`"targets":[{"name":"mac","reachable":true,"loaded":[],"own":true}]}`
	// Newest created first, as GET /jobs lists them; B ended last, A before C.
	at := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339) }
	job := func(id, created, finished string) string {
		return `{"id":"` + id + `","kind":"chat","model":"tiny-a","state":"done","attempts":1,"created_at":"` + created +
			`","started_at":"` + created + `","finished_at":"` + finished + `","priority":"normal","program":""}`
	}
	jobs := `{"jobs":[` + job("01JGJ4Q2R000000000000000CC", at(-5*time.Minute), at(-4*time.Minute)) + `,` +
		job("01JGJ4Q2R000000000000000BB", at(-6*time.Minute), at(-1*time.Minute)) + `,` +
		job("01JGJ4Q2R000000000000000AA", at(-7*time.Minute), at(-3*time.Minute)) + `]}`
	base := cannedPage(t, queue, jobs)

	dom := headless(t, browser, base+"/ui/", 3*time.Second)
	box := section(dom, "paused", "</div>")
	if !strings.Contains(box, `class="paused restart"`) || strings.Contains(box, "hidden") ||
		!strings.Contains(box, "Worker stopped: the job store cannot write until foreman is restarted") ||
		!strings.Contains(box, "it does not resume by itself") || strings.Contains(box, "until it resumes") {
		t.Errorf("the page does not say a restart is needed:\n%s", box)
	}
	if !strings.Contains(box, "&lt;b&gt;write error&lt;/b&gt;") {
		t.Errorf("the pause's error is not shown as text:\n%s", box)
	}
	recent := section(dom, "recent-rows", "</tbody>")
	b, a, c := strings.Index(recent, "BB"), strings.Index(recent, "AA"), strings.Index(recent, "CC")
	if b < 0 || a < 0 || c < 0 || !(b < a && a < c) {
		t.Errorf("recent jobs not listed by their end, newest first (BB, AA, CC):\n%s", recent)
	}
	screenshot(t, browser, base+"/ui/", "restart")
}

// While a job runs on an Ollama that leaves foreman's polls unanswered (a hung Mac), the
// worker is not paused (it waits on the job's call), and the page warns that Ollama does
// not answer, since when: the running job alone would look fine until its attempt is
// given up. The warning goes once Ollama answers again.
func TestStatusPageWarnsOfAHungOllamaWhileAJobRunsInBrowser(t *testing.T) {
	browser := findBrowser(t)
	t.Parallel()
	fake := ollamatest.New(t)
	release := fake.Hold("")
	t.Cleanup(release)
	a := testApp(t, fake.URL, map[string]string{"FOREMAN_POLL_INTERVAL": "200ms"})
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })
	base := "http://" + a.Addr()
	id := postJob(t, a.Addr(), "tiny-a")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatalf("job %s never reached the target: %v", id, err)
	}
	fake.SetDown(true)
	ownDown := func() bool {
		resp, err := http.Get(base + "/queue")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var q struct {
			Targets []struct {
				Own       bool
				Reachable bool
				DownSince string `json:"down_since"`
			}
		}
		return json.NewDecoder(resp.Body).Decode(&q) == nil && len(q.Targets) > 0 && q.Targets[0].Own &&
			!q.Targets[0].Reachable && q.Targets[0].DownSince != ""
	}
	waitFor(t, "GET /queue to show the own target down", ownDown)

	dom := headless(t, browser, base+"/ui/", 3*time.Second)
	box := section(dom, "target-down", "</div>")
	if strings.Contains(box, "hidden") || !regexp.MustCompile(`Ollama has not answered foreman's polls since \d\d:\d\d:\d\d`).MatchString(box) ||
		!strings.Contains(box, "the running job gets no answer from it") {
		t.Errorf("the page does not warn that Ollama does not answer:\n%s", box)
	}
	if run := section(dom, "running", "</dl>"); !strings.Contains(run, id) {
		t.Errorf("job %s is not shown running:\n%s", id, run)
	}
	if !regexp.MustCompile(`<div id="paused"[^>]* hidden[^>]*></div>`).MatchString(dom) {
		t.Errorf("the worker, running a job, shows a pause:\n%s", section(dom, "paused", "</div>"))
	}
	screenshot(t, browser, base+"/ui/", "ollama-hung")

	fake.SetDown(false)
	waitFor(t, "GET /queue to show the own target back", func() bool { return !ownDown() })
	dom = headless(t, browser, base+"/ui/", 3*time.Second)
	if !regexp.MustCompile(`<div id="target-down"[^>]* hidden[^>]*></div>`).MatchString(dom) {
		t.Errorf("the warning stays once Ollama answers:\n%s", section(dom, "target-down", "</div>"))
	}
	release()
	waitFor(t, "job "+id+" to finish", func() bool { return getJob(t, a.Addr(), id).State == "done" })
}

// A job backing off after a failed attempt is told from one waiting its first turn in the
// page's queue: its state cell says after which attempt, with the error as text.
func TestStatusPageShowsARetryingJobInBrowser(t *testing.T) {
	browser := findBrowser(t)
	t.Parallel()
	at := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339) }
	queue := `{"running":null,"loaded":[],"total":2,"depth":{"tiny-a:latest":2},"running_elsewhere":[],"paused":null,"queued":[` +
		`{"job_id":"01JGJ4Q2R000000000000000CC","model":"tiny-a","kind":"chat","priority":"normal","program":"","created_at":"` + at(-2*time.Minute) +
		`","queue_position":1,"eta":"` + at(20*time.Second) + `","state":"retrying","attempts":2,"error":"ollama: POST /api/chat: <i>EOF</i>"},` +
		`{"job_id":"01JGJ4Q2R000000000000000DD","model":"tiny-a","kind":"chat","priority":"normal","program":"","created_at":"` + at(-time.Minute) +
		`","queue_position":2,"eta":"` + at(50*time.Second) + `"}],` +
		`"targets":[{"name":"mac","reachable":true,"loaded":[],"own":true}]}`
	base := cannedPage(t, queue, `{"jobs":[]}`)

	dom := headless(t, browser, base+"/ui/", 3*time.Second)
	rows := section(dom, "queue-rows", "</tbody>")
	if !regexp.MustCompile(`data-job-id="01JGJ4Q2R000000000000000CC" class="queued-job">.*?<td class="retrying" data-field="state" title="ollama: POST /api/chat: &lt;i&gt;EOF&lt;/i&gt;">retrying after attempt 2<div class="err"><bdi>ollama: POST /api/chat: &lt;i&gt;EOF&lt;/i&gt;</bdi></div></td>`).MatchString(rows) {
		t.Errorf("job CC is not shown retrying after attempt 2 with its error as text:\n%s", rows)
	}
	if !regexp.MustCompile(`data-job-id="01JGJ4Q2R000000000000000DD" class="queued-job">.*?<td class="muted" data-field="state">waiting</td>`).MatchString(rows) {
		t.Errorf("job DD is not shown waiting:\n%s", rows)
	}
	screenshot(t, browser, base+"/ui/", "retrying")
}

// A worker waiting after Ollama's "not now" (ADR-0086) says so in words in the banner,
// and the job answered so, its attempt not counted, is shown retrying without a number.
func TestStatusPageShowsOllamaBusyInBrowser(t *testing.T) {
	browser := findBrowser(t)
	t.Parallel()
	at := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339) }
	queue := `{"running":null,"loaded":[],"total":1,"depth":{"tiny-a:latest":1},"running_elsewhere":[],` +
		`"paused":{"reason":"target_busy","since":"` + at(-4*time.Second) + `","error":"ollama: HTTP 503: server busy, please try again.  maximum pending requests exceeded"},"queued":[` +
		`{"job_id":"01JGJ4Q2R000000000000000EE","model":"tiny-a","kind":"chat","priority":"normal","program":"","created_at":"` + at(-time.Minute) +
		`","queue_position":1,"eta":"` + at(5*time.Second) + `","state":"retrying","error":"ollama: HTTP 503: server busy, please try again.  maximum pending requests exceeded"}],` +
		`"targets":[{"name":"mac","reachable":true,"loaded":[],"own":true}]}`
	base := cannedPage(t, queue, `{"jobs":[]}`)

	dom := headless(t, browser, base+"/ui/", 3*time.Second)
	if banner := section(dom, "paused", "</div>"); !strings.Contains(banner, "Worker paused: Ollama answers that it is busy") {
		t.Errorf("banner does not say Ollama is busy:\n%s", banner)
	}
	rows := section(dom, "queue-rows", "</tbody>")
	if !regexp.MustCompile(`data-job-id="01JGJ4Q2R000000000000000EE" class="queued-job">.*?<td class="retrying" data-field="state" title="[^"]*">retrying<div class="err"><bdi>ollama: HTTP 503: server busy`).MatchString(rows) {
		t.Errorf("job EE is not shown retrying, without an attempt's number, with its error:\n%s", rows)
	}
	screenshot(t, browser, base+"/ui/", "busy")
}

// A job this foreman's worker leaves to another Mac (left_elsewhere, ADR-0066) says so in
// its state cell, beside its retry; a job without the field says nothing of it.
func TestStatusPageShowsAJobLeftToAnotherMacInBrowser(t *testing.T) {
	browser := findBrowser(t)
	t.Parallel()
	at := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339) }
	queue := `{"running":null,"loaded":[],"total":2,"depth":{"tiny-a:latest":1,"tiny-b:latest":1},"running_elsewhere":[],"paused":null,"queued":[` +
		`{"job_id":"01JGJ4Q2R000000000000000DD","model":"tiny-b","kind":"chat","priority":"normal","program":"","created_at":"` + at(-time.Minute) +
		`","queue_position":1,"eta":"` + at(0) + `"},` +
		`{"job_id":"01JGJ4Q2R000000000000000CC","model":"tiny-a","kind":"chat","priority":"normal","program":"","created_at":"` + at(-2*time.Minute) +
		`","queue_position":2,"eta":"` + at(2*time.Minute) + `","state":"retrying","attempts":1,"error":"target stalled: no data for 2m0s","left_elsewhere":true}],` +
		`"targets":[{"name":"mac","reachable":true,"loaded":[],"own":true}]}`
	base := cannedPage(t, queue, `{"jobs":[]}`)

	dom := headless(t, browser, base+"/ui/", 3*time.Second)
	rows := section(dom, "queue-rows", "</tbody>")
	if !regexp.MustCompile(`data-job-id="01JGJ4Q2R000000000000000CC" class="queued-job">.*?<td class="retrying" data-field="state"[^>]*>retrying after attempt 1<div class="err"><bdi>[^<]*</bdi></div><div class="left-elsewhere" data-field="left-elsewhere">left to another Mac that has its model</div></td>`).MatchString(rows) {
		t.Errorf("job CC is not shown left to another Mac:\n%s", rows)
	}
	if !regexp.MustCompile(`data-job-id="01JGJ4Q2R000000000000000DD" class="queued-job">.*?<td class="muted" data-field="state">waiting</td>`).MatchString(rows) {
		t.Errorf("job DD is not shown waiting, and only that:\n%s", rows)
	}
	screenshot(t, browser, base+"/ui/", "left-elsewhere")
}

// Jobs this foreman's worker leaves to other Macs (waiting_elsewhere: its Mac lacks
// their model) are listed after its own, with no position or ETA, said to wait for
// another Mac; the Queued count adds them apart.
func TestStatusPageShowsJobsWaitingForAnotherMacInBrowser(t *testing.T) {
	browser := findBrowser(t)
	t.Parallel()
	at := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339) }
	queue := `{"running":null,"loaded":[],"total":1,"depth":{"tiny-a:latest":1,"tiny-b:latest":2},"running_elsewhere":[],"paused":null,"queued":[` +
		`{"job_id":"01JGJ4Q2R000000000000000AA","model":"tiny-a","kind":"chat","priority":"normal","program":"","created_at":"` + at(-time.Minute) +
		`","queue_position":1,"eta":"` + at(time.Minute) + `"}],"waiting_elsewhere":[` +
		`{"job_id":"01JGJ4Q2R000000000000000BB","model":"tiny-b","kind":"chat","priority":"high","program":"","created_at":"` + at(-2*time.Minute) + `"},` +
		`{"job_id":"01JGJ4Q2R000000000000000CC","model":"tiny-b","kind":"chat","priority":"normal","program":"","created_at":"` + at(-3*time.Minute) +
		`","state":"retrying","attempts":1,"error":"target stalled"}],` +
		`"targets":[{"name":"mac","reachable":true,"loaded":[],"own":true}]}`
	base := cannedPage(t, queue, `{"jobs":[]}`)

	dom := headless(t, browser, base+"/ui/", 3*time.Second)
	rows := section(dom, "queue-rows", "</tbody>")
	if !regexp.MustCompile(`data-job-id="01JGJ4Q2R000000000000000AA" class="queued-job"><td>1</td><td>in `).MatchString(rows) {
		t.Errorf("job AA is not shown at position 1 with its ETA:\n%s", rows)
	}
	if !regexp.MustCompile(`data-job-id="01JGJ4Q2R000000000000000BB" class="queued-job"><td>–</td><td>–</td>.*?<td class="muted" data-field="state">waiting<div class="left-elsewhere" data-field="waiting-elsewhere">for another Mac: not run here</div></td>`).MatchString(rows) {
		t.Errorf("job BB is not shown waiting for another Mac, without position or ETA:\n%s", rows)
	}
	if !regexp.MustCompile(`data-job-id="01JGJ4Q2R000000000000000CC" class="queued-job"><td>–</td>.*?retrying after attempt 1<div class="err"><bdi>[^<]*</bdi></div><div class="left-elsewhere" data-field="waiting-elsewhere">`).MatchString(rows) {
		t.Errorf("job CC is not shown retrying for another Mac:\n%s", rows)
	}
	if i, j := strings.Index(rows, "000000000AA"), strings.Index(rows, "000000000BB"); i < 0 || j < i {
		t.Errorf("the own job is not listed before those for other Macs:\n%s", rows)
	}
	if total, others := section(dom, "queue-total", "</div>"), section(dom, "queue-others", "</div>"); !strings.HasSuffix(total, ">1") || !strings.HasSuffix(others, ">and 2 for other Macs") {
		t.Errorf("queued count %q, %q: want 1, and 2 for other Macs", total, others)
	}
	screenshot(t, browser, base+"/ui/", "waiting-elsewhere")
}
