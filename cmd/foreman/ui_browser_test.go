package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// findBrowser returns a Chromium-like browser on PATH, or skips the test.
func findBrowser(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no chromium, chromium-browser or google-chrome on PATH: the status page is not tested in a browser (.ci/run installs chromium)")
	return ""
}

// headless loads url in the browser, lets the page's script run for budget of virtual time
// (its polls of the API take real time: the browser waits for them), and returns the DOM
// it rendered; with extra flags (e.g. --screenshot=…) it returns what the browser printed.
func headless(t *testing.T, browser, url string, budget time.Duration, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--disable-extensions", "--disable-background-networking", "--hide-scrollbars",
		"--user-data-dir=" + t.TempDir(), "--window-size=1280,1000",
		"--virtual-time-budget=" + strconv.FormatInt(budget.Milliseconds(), 10),
	}, extra...)
	if len(extra) == 0 {
		args = append(args, "--dump-dom")
	}
	cmd := exec.CommandContext(ctx, browser, append(args, url)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", browser, err, stderr.String())
	}
	return string(out)
}

// section is the inner HTML of the element with the given id in a dumped DOM (up to the
// end of its tbody/div/ul), "" when absent.
func section(dom, id, end string) string {
	i := strings.Index(dom, `id="`+id+`"`)
	if i < 0 {
		return ""
	}
	rest := dom[i:]
	if j := strings.Index(rest, end); j >= 0 {
		return rest[:j]
	}
	return rest
}

// queueLists is GET /queue's total and its lists of other Macs' jobs.
func queueLists(t *testing.T, base string) (q struct {
	Total            int               `json:"total"`
	WaitingElsewhere []json.RawMessage `json:"waiting_elsewhere"`
	RunningElsewhere []json.RawMessage `json:"running_elsewhere"`
}) {
	t.Helper()
	resp, err := http.Get(base + "/queue")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&q); err != nil {
		t.Fatal(err)
	}
	return q
}

// queueTotal is GET /queue's total.
func queueTotal(t *testing.T, base string) int {
	t.Helper()
	resp, err := http.Get(base + "/queue")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var q struct {
		Total int `json:"total"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&q); err != nil {
		t.Fatal(err)
	}
	return q.Total
}

// The status page, loaded in a real headless browser, shows the running job, the queue
// (every queued job's id, in order) and, after the jobs ran, an empty queue and the jobs
// among the recent ones. FOREMAN_UI_SCREENSHOT=path saves screenshots of the full queue
// and of the page after the run (path-after.png).
func TestStatusPageInBrowser(t *testing.T) {
	browser := findBrowser(t)
	t.Parallel()
	fake := ollamatest.New(t)
	release := fake.Hold("")
	t.Cleanup(release)
	a := testApp(t, fake.URL, nil)
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })
	base := "http://" + a.Addr()

	running := postJob(t, a.Addr(), "tiny-a")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatalf("the first job never reached the target: %v", err)
	}
	var queued []string
	for _, m := range []string{"tiny-b", "tiny-a", "tiny-b"} {
		queued = append(queued, postJob(t, a.Addr(), m))
	}
	waitFor(t, "the jobs to be queued", func() bool { return getJob(t, a.Addr(), queued[2]).State == "queued" })

	dom := headless(t, browser, base+"/ui/", 3*time.Second)
	rows := section(dom, "queue-rows", "</tbody>")
	last := -1
	for _, id := range queued {
		i := strings.Index(rows, `data-job-id="`+id+`"`)
		if i < 0 {
			t.Fatalf("queued job %s is not in the page's queue:\n%s", id, rows)
		}
		last = i
	}
	if n := strings.Count(rows, `class="queued-job"`); n != len(queued) || last < 0 {
		t.Errorf("the page's queue has %d rows, want %d:\n%s", n, len(queued), rows)
	}
	if run := section(dom, "running", "</dl>"); !strings.Contains(run, running) || !strings.Contains(run, "tiny-a") {
		t.Errorf("the running job %s is not shown as running:\n%s", running, run)
	}
	if !regexp.MustCompile(`<div id="paused"[^>]* hidden[^>]*></div>`).MatchString(dom) {
		t.Errorf("a running worker shows a pause:\n%s", section(dom, "paused", "</div>"))
	}
	if !regexp.MustCompile(`id="queue-total"[^>]*>3<`).MatchString(dom) {
		t.Errorf("the queue total is not 3:\n%s", section(dom, "queue-total", "</div>"))
	}
	if path := os.Getenv("FOREMAN_UI_SCREENSHOT"); path != "" {
		abs, _ := filepath.Abs(path)
		headless(t, browser, base+"/ui/", 3*time.Second, "--screenshot="+abs)
		t.Logf("screenshot in %s", abs)
	}

	release()
	for _, id := range append([]string{running}, queued...) {
		waitFor(t, "job "+id+" to finish", func() bool { return getJob(t, a.Addr(), id).State == "done" })
	}
	// The queue view follows the queue a moment later than the job records.
	waitFor(t, "an empty queue", func() bool { return queueTotal(t, base) == 0 })
	dom = headless(t, browser, base+"/ui/", 3*time.Second)
	rows = section(dom, "queue-rows", "</tbody>")
	if strings.Contains(rows, `class="queued-job"`) || !strings.Contains(rows, "the queue is empty") {
		t.Errorf("the queue is not empty after the jobs ran:\n%s", rows)
	}
	if path := os.Getenv("FOREMAN_UI_SCREENSHOT"); path != "" {
		abs, _ := filepath.Abs(strings.TrimSuffix(path, ".png") + "-after.png")
		headless(t, browser, base+"/ui/", 3*time.Second, "--screenshot="+abs)
		t.Logf("screenshot after the run in %s", abs)
	}
	// Two models ran: foreman counted at least two loads (foreman_model_loads_total).
	loads := -1
	if m := regexp.MustCompile(`id="load-count"[^>]*>(\d+)<`).FindStringSubmatch(dom); m != nil {
		loads, _ = strconv.Atoi(m[1])
	}
	if loads < 2 || !strings.Contains(dom, "since foreman started") {
		t.Errorf("load count %d, want at least 2 from /metrics:\n%s", loads, section(dom, "load-count", "</div></div>"))
	}
	recent := section(dom, "recent-rows", "</tbody>")
	for _, id := range append([]string{running}, queued...) {
		if !strings.Contains(recent, `data-job-id="`+id+`"`) {
			t.Errorf("finished job %s is not among the recent jobs:\n%s", id, recent)
		}
	}
}

// While Ollama is unreachable the page says the worker is paused, why and with what
// error, above a queue holding the job whose call failed.
func TestStatusPageShowsAPausedWorkerInBrowser(t *testing.T) {
	browser := findBrowser(t)
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })
	base := "http://" + a.Addr()
	fake.SetDown(true)
	id := postJob(t, a.Addr(), "tiny-a")
	waitFor(t, "GET /queue to show the pause", func() bool {
		resp, err := http.Get(base + "/queue")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var q struct {
			Paused *struct{ Reason string } `json:"paused"`
		}
		return json.NewDecoder(resp.Body).Decode(&q) == nil && q.Paused != nil
	})
	dom := headless(t, browser, base+"/ui/", 3*time.Second)
	for try := 1; try < 3 && !strings.Contains(dom, `id="paused"`); try++ {
		// The page's own markup is missing: the browser gave no page (seen once on a
		// machine busy with other tests), not the page without the pause.
		t.Logf("no page in the browser's dump (%d bytes): %.200q", len(dom), dom)
		dom = headless(t, browser, base+"/ui/", 3*time.Second)
	}
	box := section(dom, "paused", "</div>")
	if strings.Contains(box, "hidden") || !strings.Contains(box, "Worker paused: Ollama is unreachable") ||
		!regexp.MustCompile(`class="err">[^<]+<`).MatchString(box) {
		t.Errorf("the page does not show the pause with its error:\n%s", box)
	}
	if rows := section(dom, "queue-rows", "</tbody>"); !strings.Contains(rows, `data-job-id="`+id+`"`) {
		t.Errorf("job %s is not in the page's queue:\n%s", id, rows)
	}
	if path := os.Getenv("FOREMAN_UI_SCREENSHOT"); path != "" {
		abs, _ := filepath.Abs(strings.TrimSuffix(path, ".png") + "-paused.png")
		headless(t, browser, base+"/ui/", 3*time.Second, "--screenshot="+abs)
		t.Logf("screenshot of the pause in %s", abs)
	}
	fake.SetDown(false)
	waitFor(t, "job "+id+" to finish", func() bool { return getJob(t, a.Addr(), id).State == "done" })
}

// With auth on the page itself loads without a token, asks for one when the API answers
// 401, and shows no data.
func TestStatusPageAsksForATokenInBrowser(t *testing.T) {
	browser := findBrowser(t)
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, map[string]string{"FOREMAN_AUTH_TOKEN": "s3cret"})
	dom := headless(t, browser, "http://"+a.Addr()+"/ui/", 2*time.Second)
	form := section(dom, "token-form", ">")
	if form == "" || strings.Contains(form, "hidden") {
		t.Errorf("the token form is not shown: %q", form)
	}
	if status := section(dom, "status", "</span>"); !strings.Contains(status, "a bearer token is needed") {
		t.Errorf("status: %q", status)
	}
	// Nothing was read: no figure may look like one (a queue of 0, no job running).
	for _, id := range []string{"queue-total", "load-count", "running"} {
		if box := section(dom, id, "</div>"); regexp.MustCompile(`>(0|nothing)<`).MatchString(box + "<") {
			t.Errorf("%s shows data before any was read: %q", id, box)
		}
	}
}

// With more jobs waiting than the page lists (130 for one model, the page shows 100),
// the depth chart counts them all, and the recent jobs are the finished ones although
// every newer job waits; a long error is clipped in its cell, whole in its title.
func TestStatusPageWithALongBacklogInBrowser(t *testing.T) {
	browser := findBrowser(t)
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })
	base := "http://" + a.Addr()

	longErr := "runner failed:" + strings.Repeat(" the model's runner said something long", 100)
	fake.FailNext(1, ollamatest.FailStatus(http.StatusBadRequest, longErr))
	failed := postJob(t, a.Addr(), "tiny-a")
	waitFor(t, "job "+failed+" to fail", func() bool { return getJob(t, a.Addr(), failed).State == "failed" })
	done := postJob(t, a.Addr(), "tiny-a")
	waitFor(t, "job "+done+" to finish", func() bool { return getJob(t, a.Addr(), done).State == "done" })

	release := fake.Hold("")
	t.Cleanup(release)
	running := postJob(t, a.Addr(), "tiny-a")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatalf("job %s never reached the target: %v", running, err)
	}
	const backlog = 130
	for range backlog {
		postJob(t, a.Addr(), "tiny-b")
	}
	waitFor(t, "the backlog in the queue view", func() bool { return queueTotal(t, base) == backlog })

	dom := headless(t, browser, base+"/ui/", 3*time.Second)
	if !regexp.MustCompile(`id="queue-total"[^>]*>130<`).MatchString(dom) {
		t.Errorf("the queue total is not %d:\n%s", backlog, section(dom, "queue-total", "</div>"))
	}
	// The chart's scale tops at the deepest model's depth.
	if chart := section(dom, "chart-depth", "</svg>"); !strings.Contains(chart, ">130</text>") {
		t.Errorf("the depth chart does not reach %d:\n%s", backlog, chart)
	}
	recent := section(dom, "recent-rows", "</tbody>")
	for _, id := range []string{done, failed} {
		if !strings.Contains(recent, `data-job-id="`+id+`"`) {
			t.Errorf("finished job %s is not among the recent jobs:\n%.2000s", id, recent)
		}
	}
	cell := regexp.MustCompile(`<td class="err" title="([^"]*)"><bdi>([^<]*)</bdi></td>`).FindStringSubmatch(recent)
	if cell == nil || !strings.Contains(cell[1], longErr) || len(cell[2]) > 300 {
		t.Errorf("the failed job's error is not clipped with its whole text in the title:\n%.2000s", recent)
	}
	if path := os.Getenv("FOREMAN_UI_SCREENSHOT"); path != "" {
		abs, _ := filepath.Abs(strings.TrimSuffix(path, ".png") + "-backlog.png")
		// Tall enough for the recent jobs below the 100 queued rows.
		headless(t, browser, base+"/ui/", 3*time.Second, "--screenshot="+abs, "--window-size=1280,4800")
		t.Logf("screenshot of the backlog in %s", abs)
	}
}

// With two foremen on one NATS, the status page of the foreman whose worker is idle
// shows the job the other Mac runs as running there, not as waiting at position 1, and
// the job behind it, of a model its own Mac lacks, as waiting for another Mac, with no
// position (ADR-0073).
func TestStatusPageShowsJobsRunningElsewhereInBrowser(t *testing.T) {
	browser := findBrowser(t)
	t.Parallel()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(ns.Shutdown)
	shared := func(name string) map[string]string {
		return map[string]string{"FOREMAN_NATS_URL": ns.ClientURL(), "FOREMAN_NATS_REPLICAS": "1", "FOREMAN_TARGET_NAME": name, "FOREMAN_POLL_INTERVAL": "200ms"}
	}
	// Mac A has tiny-a alone; mac B has only tiny-b, so only A runs tiny-a jobs.
	macA := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "tiny-a:latest"}))
	macB := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "tiny-b:latest"}))
	release := macA.Hold("tiny-a")
	t.Cleanup(release)
	a := testApp(t, macA.URL, shared("mac-a"))
	b := testApp(t, macB.URL, shared("mac-b"))
	waitFor(t, "both foremen to see each other", func() bool {
		resp, err := http.Get("http://" + b.Addr() + "/queue")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var q struct{ Targets []struct{ Reachable bool } }
		return json.NewDecoder(resp.Body).Decode(&q) == nil && len(q.Targets) == 2 && q.Targets[0].Reachable && q.Targets[1].Reachable
	})
	running := postJob(t, a.Addr(), "tiny-a")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := macA.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatalf("job %s never reached mac A: %v", running, err)
	}
	waiting := postJob(t, b.Addr(), "tiny-a")
	waitFor(t, "job "+running+" to run", func() bool { s := getJob(t, b.Addr(), running).State; return s == "loading" || s == "working" })

	base := "http://" + b.Addr()
	waitFor(t, "mac B's queue to hold one job waiting for another Mac", func() bool {
		q := queueLists(t, base)
		return q.Total == 0 && len(q.WaitingElsewhere) == 1 && len(q.RunningElsewhere) == 1
	})
	dom := headless(t, browser, base+"/ui/", 3*time.Second)
	if box := section(dom, "elsewhere", "</ul>"); !strings.Contains(box, `data-job-id="`+running+`"`) || strings.Contains(box, "hidden") {
		t.Errorf("job %s is not shown running on another Mac:\n%s", running, box)
	} else if !strings.Contains(box, "on <bdi>mac-a</bdi>: ") || strings.Contains(box, "runner-gone") {
		t.Errorf("job %s is not shown running on mac-a, its foreman there:\n%s", running, box)
	}
	rows := section(dom, "queue-rows", "</tbody>")
	if strings.Contains(rows, running) || !regexp.MustCompile(`data-job-id="`+waiting+`" class="queued-job"><td>–</td><td>–</td>.*?for another Mac: not run here`).MatchString(rows) {
		t.Errorf("the queue should hold %s alone, waiting for another Mac:\n%s", waiting, rows)
	}

	// The waiting job's record made to say a third foreman runs it, one whose presence is
	// gone (it died): the page says so (ADR-0064).
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	st, err := broker.Open(ctx, broker.Config{Conn: nc})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Modify(ctx, waiting, func(j *broker.Job) error {
		j.State, j.Attempt = broker.StateWorking, 1
		j.Runner, j.RunnerBoot, j.RunnerAttempt = "mac-c", broker.NewID(), 1
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "mac B's queue to show "+waiting+" on a Mac whose foreman is gone", func() bool {
		q := queueLists(t, base)
		return len(q.WaitingElsewhere) == 0 && len(q.RunningElsewhere) == 2
	})
	dom = headless(t, browser, base+"/ui/", 3*time.Second)
	if box := section(dom, "elsewhere", "</ul>"); !regexp.MustCompile(`data-job-id="` + waiting + `"[^>]*><span class="muted">on <bdi>mac-c</bdi>: </span>.*?<span class="warn" data-field="runner-gone">`).MatchString(box) {
		t.Errorf("job %s is not shown on mac-c with its foreman gone:\n%s", waiting, box)
	}
	if path := os.Getenv("FOREMAN_UI_SCREENSHOT"); path != "" {
		abs, _ := filepath.Abs(strings.TrimSuffix(path, ".png") + "-elsewhere.png")
		headless(t, browser, base+"/ui/", 3*time.Second, "--screenshot="+abs)
		t.Logf("screenshot of a job running elsewhere in %s", abs)
	}
}
