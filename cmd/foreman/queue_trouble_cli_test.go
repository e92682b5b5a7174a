package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// troubleRunning is a GET /queue "running" field relative to fixedNow (2025-01-02T03:04:05Z).
const troubleRunning = `"running":{"id":"01JGJ4Q2R0000000000000000B","kind":"chat","model":"qwen2.5:0.5b","state":"working","attempts":1,"created_at":"2025-01-02T02:58:05Z","started_at":"2025-01-02T03:01:05Z","finished_at":null,"error":"","result":null,"artifacts":[],"priority":"normal","program":""}`

// restartBody: the worker paused by a store fault only a restart ends (ADR-0041).
const restartBody = `{"running":null,"loaded":[],"queued":[],"total":0,` +
	`"paused":{"reason":"store_refuses_writes","since":"2025-01-02T03:01:05Z","error":"broker: probe write: job store cannot write until foreman restarts (the store's fault: write error: no space left on device)","restart_needed":true},` +
	`"targets":[{"name":"mac","reachable":true,"loaded":[],"own":true}]}`

// hungBody: a job runs while the own Ollama leaves its polls unanswered; the worker is not
// paused, it waits on the job's call. The error carries a terminal control sequence.
const hungBody = `{` + troubleRunning + `,"loaded":[],"queued":[],"total":0,"paused":null,` +
	`"targets":[{"name":"mac","reachable":false,"loaded":[],"own":true,"down_since":"2025-01-02T03:03:00Z","error":"ollama: poll: no answer within 10s\u001b[2J"},` +
	`{"name":"studio","reachable":true,"loaded":[]}]}`

// busyBody: the worker waits after Ollama answered a job's call "not now" (ADR-0086);
// the job it answered so waits again, its attempt not counted.
const busyBody = `{"running":null,"loaded":[],"queued":[` +
	`{"job_id":"01JGJ4Q2R0000000000000000H","model":"qwen2.5:0.5b","kind":"chat","priority":"normal","program":"","created_at":"2025-01-02T03:00:00Z","queue_position":1,"eta":"2025-01-02T03:04:05Z",` +
	`"state":"retrying","error":"ollama: HTTP 503: server busy, please try again.  maximum pending requests exceeded"}],"total":1,` +
	`"paused":{"reason":"target_busy","since":"2025-01-02T03:04:00Z","error":"ollama: HTTP 503: server busy, please try again.  maximum pending requests exceeded"},` +
	`"targets":[{"name":"mac","reachable":true,"loaded":[],"own":true}]}`

// troubleForeman serves body on GET /queue and no finished jobs on GET /jobs (top reads both).
func troubleForeman(t *testing.T, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/queue":
			_, _ = io.WriteString(w, body)
		case "/jobs":
			_, _ = io.WriteString(w, `{"jobs":[]}`)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// queueOrTop runs `foreman queue` (cmd "queue") or `foreman top --once` (cmd "top") with
// vars, and fails t unless it exits 0.
func queueOrTop(t *testing.T, vars map[string]string, cmd string) cliResult {
	t.Helper()
	args := []string{cmd}
	if cmd == "top" {
		args = append(args, "--once")
	}
	r := runCLI(t, vars, nil, nil, args...)
	if r.code != 0 {
		t.Fatalf("%s: exit %d, stderr %q", cmd, r.code, r.stderr)
	}
	return r
}

// A pause that only a restart of foreman ends says so in `foreman queue` and `foreman
// top`: "refuses writes" alone reads as if it would pass by itself.
func TestQueueAndTopSayARestartIsNeeded(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"FOREMAN_URL": troubleForeman(t, restartBody)}
	for _, c := range []struct{ cmd, line string }{
		{"queue", "Paused:  job store cannot write for 3m; foreman needs a restart (once its disk has room): broker: probe write: job store cannot write until foreman restarts"},
		{"top", "PAUSED   job store cannot write for 3m00s; foreman needs a restart (once its disk has room): broker: probe write:"},
	} {
		r := queueOrTop(t, vars, c.cmd)
		if !strings.Contains(r.stdout, c.line) || strings.Contains(r.stdout, "refuses writes") {
			t.Errorf("foreman %s printed no line %q:\n%s", c.cmd, c.line, r.stdout)
		}
	}
}

// The same pause for a data directory gone read-only (a disk error) says the disk needs
// fixing: "once its disk has room" sends the operator after space that is there.
func TestQueueAndTopSayTheDataDirWentReadOnly(t *testing.T) {
	t.Parallel()
	body := strings.Replace(restartBody, "write error: no space left on device", "write error: open /data/jetstream/x.blk: read-only file system", 1)
	vars := map[string]string{"FOREMAN_URL": troubleForeman(t, body)}
	for _, c := range []struct{ cmd, line string }{
		{"queue", "Paused:  job store cannot write for 3m; foreman needs a restart (once its disk is fixed: its data directory went read-only): broker: probe write:"},
		{"top", "PAUSED   job store cannot write for 3m00s; foreman needs a restart (once its disk is fixed: its data directory went read-only): broker: probe write:"},
	} {
		r := queueOrTop(t, vars, c.cmd)
		if !strings.Contains(r.stdout, c.line) || strings.Contains(r.stdout, "has room") {
			t.Errorf("foreman %s printed no line %q:\n%s", c.cmd, c.line, r.stdout)
		}
	}
}

// A worker waiting after Ollama's "not now" says so in words in `foreman queue` and
// `foreman top`, not as the reason's code; the job answered so is retrying with no
// attempt counted, and no "attempt 0" is printed.
func TestQueueAndTopSayOllamaIsBusy(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"FOREMAN_URL": troubleForeman(t, busyBody)}
	for _, c := range []struct{ cmd, line string }{
		{"queue", "Paused:  Ollama busy for 5s: ollama: HTTP 503: server busy"},
		{"top", "PAUSED   Ollama busy for 5s: ollama: HTTP 503: server busy"},
	} {
		r := queueOrTop(t, vars, c.cmd)
		if !strings.Contains(r.stdout, c.line) {
			t.Errorf("foreman %s printed no line %q:\n%s", c.cmd, c.line, r.stdout)
		}
		if strings.Contains(r.stdout, "(0)") || strings.Contains(r.stdout, "attempt 0") {
			t.Errorf("foreman %s numbers an attempt not counted:\n%s", c.cmd, r.stdout)
		}
	}
	r := queueOrTop(t, vars, "queue")
	for _, re := range []string{
		`(?m)^1 +01JGJ4Q2R0000000000000000H .* retrying$`,
		`(?m)^Retrying: 01JGJ4Q2R0000000000000000H: ollama: HTTP 503: server busy`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("foreman queue: no line matching %s:\n%s", re, r.stdout)
		}
	}
}

// While a job runs on an Ollama that leaves foreman's polls unanswered (hung), `foreman
// queue` and `foreman top` say so under the running job, with the poll's error made safe
// for a terminal; a worker paused for Ollama already says it, and no line repeats it.
func TestQueueAndTopShowAHungOllamaWhileAJobRuns(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"FOREMAN_URL": troubleForeman(t, hungBody)}
	for _, c := range []struct{ cmd, line string }{
		{"queue", "Ollama:  no answer to foreman's polls for 1m: ollama: poll: no answer within 10s\\x1b[2J\n"},
		{"top", "OLLAMA   no answer to foreman's polls for 1m05s: ollama: poll: no answer within 10s\\x1b[2J\n"},
	} {
		r := queueOrTop(t, vars, c.cmd)
		if !strings.Contains(r.stdout, c.line) || strings.Contains(r.stdout, "\x1b") {
			t.Errorf("foreman %s printed no line %q:\n%s", c.cmd, c.line, r.stdout)
		}
	}

	paused := strings.Replace(hungBody, `"paused":null`, `"paused":{"reason":"target_unreachable","since":"2025-01-02T03:03:00Z","error":"refused"}`, 1)
	vars = map[string]string{"FOREMAN_URL": troubleForeman(t, paused)}
	for _, cmd := range [][]string{{"queue"}, {"top", "--once"}} {
		r := runCLI(t, vars, nil, nil, cmd...)
		if r.code != 0 || !strings.Contains(strings.ToLower(r.stdout), "paused") || strings.Contains(r.stdout, "no answer to foreman's polls") {
			t.Errorf("foreman %s with the worker paused for Ollama: exit %d, want the pause alone:\n%s", cmd[0], r.code, r.stdout)
		}
	}
}

// A job backing off after a failed attempt is told from one waiting its first turn in
// `foreman queue` (its state, and a line with the attempt's error made safe for a
// terminal) and in `foreman top` (its state).
func TestQueueAndTopShowARetryingJob(t *testing.T) {
	t.Parallel()
	body := `{"running":null,"loaded":[],"queued":[` +
		`{"job_id":"01JGJ4Q2R0000000000000000C","model":"qwen2.5:0.5b","kind":"chat","priority":"normal","program":"","created_at":"2025-01-02T03:00:00Z","queue_position":1,"eta":"2025-01-02T03:04:05Z",` +
		`"state":"retrying","attempts":2,"error":"ollama: POST /api/chat: EOF\u001b[2J"},` +
		`{"job_id":"01JGJ4Q2R0000000000000000D","model":"qwen2.5:0.5b","kind":"chat","priority":"normal","program":"","created_at":"2025-01-02T03:01:00Z","queue_position":2,"eta":"2025-01-02T03:04:45Z"}],` +
		`"total":2,"paused":null}`
	vars := map[string]string{"FOREMAN_URL": troubleForeman(t, body)}
	r := runCLI(t, vars, nil, nil, "queue")
	if r.code != 0 {
		t.Fatalf("queue: exit %d, stderr %q", r.code, r.stderr)
	}
	for _, re := range []string{
		`(?m)^1 +01JGJ4Q2R0000000000000000C .* retrying \(2\)$`,
		`(?m)^2 +01JGJ4Q2R0000000000000000D .* waiting$`,
		`(?m)^Retrying: 01JGJ4Q2R0000000000000000C: attempt 2 failed: ollama: POST /api/chat: EOF\\x1b\[2J$`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) || strings.Contains(r.stdout, "\x1b") {
			t.Errorf("foreman queue: no line matching %s:\n%s", re, r.stdout)
		}
	}
	r = runCLI(t, vars, nil, nil, "top", "--once")
	if r.code != 0 {
		t.Fatalf("top: exit %d, stderr %q", r.code, r.stderr)
	}
	if !regexp.MustCompile(`(?m)^1 +retrying \(2\) .*01JGJ4Q2R0000000000000000C$`).MatchString(r.stdout) ||
		!regexp.MustCompile(`(?m)^2 +waiting .*01JGJ4Q2R0000000000000000D$`).MatchString(r.stdout) {
		t.Errorf("foreman top does not tell the retrying job from the waiting one:\n%s", r.stdout)
	}
}

// A job its worker leaves to another Mac after its own Mac hung (ADR-0066) says so in
// `foreman queue` and `foreman top`, beside its state, and in the status line of a
// command waiting on it: its position is for a run on this Mac after the wait.
func TestQueueAndTopShowAJobLeftToAnotherMac(t *testing.T) {
	t.Parallel()
	body := `{"running":null,"loaded":[],"queued":[` +
		`{"job_id":"01JGJ4Q2R0000000000000000E","model":"qwen2.5:0.5b","kind":"chat","priority":"normal","program":"","created_at":"2025-01-02T03:00:00Z","queue_position":1,"eta":"2025-01-02T03:04:05Z"},` +
		`{"job_id":"01JGJ4Q2R0000000000000000C","model":"llama3.2","kind":"chat","priority":"normal","program":"","created_at":"2025-01-02T03:00:00Z","queue_position":2,"eta":"2025-01-02T03:06:05Z",` +
		`"state":"retrying","attempts":1,"error":"ollama: no answer for 10s","left_elsewhere":true},` +
		`{"job_id":"01JGJ4Q2R0000000000000000D","model":"llama3.2","kind":"chat","priority":"normal","program":"","created_at":"2025-01-02T03:01:00Z","queue_position":3,"eta":"2025-01-02T03:06:45Z","left_elsewhere":true}],` +
		`"total":3,"paused":null}`
	vars := map[string]string{"FOREMAN_URL": troubleForeman(t, body)}
	r := runCLI(t, vars, nil, nil, "queue")
	if r.code != 0 {
		t.Fatalf("queue: exit %d, stderr %q", r.code, r.stderr)
	}
	for _, re := range []string{
		`(?m)^1 +01JGJ4Q2R0000000000000000E .* waiting$`,
		`(?m)^2 +01JGJ4Q2R0000000000000000C .* retrying \(1\), elsewhere$`,
		`(?m)^3 +01JGJ4Q2R0000000000000000D .* waiting, elsewhere$`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("foreman queue: no line matching %s:\n%s", re, r.stdout)
		}
	}
	r = runCLI(t, vars, nil, nil, "top", "--once")
	if r.code != 0 {
		t.Fatalf("top: exit %d, stderr %q", r.code, r.stderr)
	}
	if !regexp.MustCompile(`(?m)^2 +retrying \(1\), elsewhere .*01JGJ4Q2R0000000000000000C$`).MatchString(r.stdout) ||
		!regexp.MustCompile(`(?m)^1 +waiting .*01JGJ4Q2R0000000000000000E$`).MatchString(r.stdout) {
		t.Errorf("foreman top does not tell the job left to another Mac:\n%s", r.stdout)
	}
	eta := fixedNow.Add(time.Minute)
	if got := queueLine(&client.Job{QueuePosition: 2, ETA: &eta, LeftElsewhere: true}); !regexp.MustCompile(`^queued: position 2, eta \d\d:\d\d:\d\d, left to another Mac$`).MatchString(got) {
		t.Errorf("status line of a job left to another Mac: %q", got)
	}
	if got := queueLine(&client.Job{QueuePosition: 1}); got != "queued: position 1" {
		t.Errorf("status line of a waiting job: %q", got)
	}
}

// Jobs this foreman's worker leaves to other Macs (waiting_elsewhere: its Mac lacks their
// model) are listed by `foreman queue` after its own, with no position or ETA, counted
// apart; `foreman top` counts them; a command waiting on one says it waits for another
// Mac.
func TestQueueAndTopShowJobsWaitingForAnotherMac(t *testing.T) {
	t.Parallel()
	body := `{"running":null,"loaded":[],"queued":[` +
		`{"job_id":"01JGJ4Q2R0000000000000000E","model":"qwen2.5:0.5b","kind":"chat","priority":"normal","program":"","created_at":"2025-01-02T03:00:00Z","queue_position":1,"eta":"2025-01-02T03:04:05Z"}],` +
		`"waiting_elsewhere":[` +
		`{"job_id":"01JGJ4Q2R0000000000000000F","model":"llama3.2","kind":"chat","priority":"high","program":"","created_at":"2025-01-02T02:59:00Z"},` +
		`{"job_id":"01JGJ4Q2R0000000000000000G","model":"llama3.2","kind":"chat","priority":"normal","program":"","created_at":"2025-01-02T03:01:00Z","state":"retrying","attempts":1,"error":"ollama: no answer for 10s"}],` +
		`"total":1,"depth":{"qwen2.5:0.5b":1,"llama3.2:latest":2},"paused":null}`
	vars := map[string]string{"FOREMAN_URL": troubleForeman(t, body)}
	r := runCLI(t, vars, nil, nil, "queue")
	if r.code != 0 {
		t.Fatalf("queue: exit %d, stderr %q", r.code, r.stderr)
	}
	for _, re := range []string{
		`(?m)^Waiting: 1 \(and 2 for another Mac\)$`,
		`(?m)^1 +01JGJ4Q2R0000000000000000E .* waiting$`,
		`(?m)^- +01JGJ4Q2R0000000000000000F +llama3.2 +chat +high +\(anonymous\) +5m +- +waiting, another Mac$`,
		`(?m)^- +01JGJ4Q2R0000000000000000G .* retrying \(1\), another Mac$`,
		`(?m)^Retrying: 01JGJ4Q2R0000000000000000G: attempt 1 failed: ollama: no answer for 10s$`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("foreman queue: no line matching %s:\n%s", re, r.stdout)
		}
	}
	r = runCLI(t, vars, nil, nil, "top", "--once")
	if r.code != 0 {
		t.Fatalf("top: exit %d, stderr %q", r.code, r.stderr)
	}
	if !regexp.MustCompile(`(?m)^QUEUE \(1\)  and 2 waiting for another Mac$`).MatchString(r.stdout) {
		t.Errorf("foreman top does not count the jobs waiting for another Mac:\n%s", r.stdout)
	}
	if got := queueLine(&client.Job{WaitingElsewhere: true}); got != "queued: waiting for another Mac" {
		t.Errorf("status line of a job waiting for another Mac: %q", got)
	}
}

// The status line of a command waiting on a job this foreman's worker leaves to other
// Macs (GET /jobs/{id}: waiting_elsewhere, no queue position) says it waits for another
// Mac: a job without a position is not taken for one whose place is unknown yet.
func TestQueueStatusSaysAJobWaitsForAnotherMac(t *testing.T) {
	t.Parallel()
	const id = "01JGJ4Q2R0000000000000000F"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/jobs/"+id {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"`+id+`","kind":"chat","model":"llama3.2","state":"queued","attempts":0,`+
			`"created_at":"2025-01-02T02:59:00Z","started_at":null,"finished_at":null,"error":"","result":null,"artifacts":[],`+
			`"priority":"normal","program":"","waiting_elsewhere":true}`)
	}))
	t.Cleanup(srv.Close)
	c, err := client.New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	st := startQueueStatus(context.Background(), &out, c, id)
	defer st.Stop()
	waitFor(t, "the status line", func() bool { return strings.Contains(out.String(), "queued: waiting for another Mac") })
}

// Spans to foreman's times are taken on foreman's clock (GET /queue's now), not on the
// CLI host's: with this host's clock 10 minutes ahead of foreman's, a job that started a
// minute ago runs for 1m (not 11m), one queued 4 minutes ago waits 4m, and an ETA 40 s
// away is "in 40s" (not "now", as every ETA was).
func TestQueueAndTopTakeSpansOnForemansClock(t *testing.T) {
	t.Parallel()
	body := `{"running":{"id":"01JGJ4Q2R0000000000000000B","kind":"chat","model":"qwen2.5:0.5b","state":"working","attempts":1,"created_at":"2025-01-02T02:52:05Z","started_at":"2025-01-02T02:53:05Z","finished_at":null,"error":"","result":null,"artifacts":[],"priority":"normal","program":""},` +
		`"loaded":["qwen2.5:0.5b"],"queued":[` +
		`{"job_id":"01JGJ4Q2R0000000000000000C","model":"qwen2.5:0.5b","kind":"chat","priority":"normal","program":"","created_at":"2025-01-02T02:50:05Z","queue_position":1,"eta":"2025-01-02T02:54:45Z"}],` +
		`"total":1,"paused":null,"now":"2025-01-02T02:54:05Z"}`
	vars := map[string]string{"FOREMAN_URL": troubleForeman(t, body)}
	r := queueOrTop(t, vars, "queue")
	for _, re := range []string{
		`(?m)^Running: 01JGJ4Q2R0000000000000000B qwen2.5:0.5b \(working, 1m\)$`,
		`(?m)^1 +01JGJ4Q2R0000000000000000C .* 4m +in 40s +waiting$`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("foreman queue: no line matching %s:\n%s", re, r.stdout)
		}
	}
	r = queueOrTop(t, vars, "top")
	for _, re := range []string{
		`(?m)^foreman \S+ +02:54:05$`,
		`(?m)^RUNNING +qwen2.5:0.5b .* working +1m00s +01JGJ4Q2R0000000000000000B$`,
		`(?m)^1 +waiting +in 40s \(\d\d:54:45\) .* 4m00s +01JGJ4Q2R0000000000000000C$`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("foreman top: no line matching %s:\n%s", re, r.stdout)
		}
	}
}

// `foreman jobs` takes the jobs' ages on foreman's clock (GET /jobs's now), not on the
// CLI host's: with this host's clock 10 minutes ahead of foreman's, a job created 4
// minutes ago is 4m old, not 14m.
func TestJobsListTakesAgesOnForemansClock(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/jobs" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"jobs":[{"id":"01JGJ4Q2R0000000000000000C","kind":"chat","model":"qwen2.5:0.5b","state":"queued","attempts":0,`+
			`"created_at":"2025-01-02T02:50:05Z","started_at":null,"finished_at":null,"error":"","result":null,"artifacts":[],"priority":"normal","program":""}],`+
			`"next_cursor":"","now":"2025-01-02T02:54:05Z"}`)
	}))
	t.Cleanup(srv.Close)
	r := runCLI(t, map[string]string{"FOREMAN_URL": srv.URL}, nil, nil, "jobs")
	if r.code != 0 {
		t.Fatalf("jobs: exit %d, stderr %q", r.code, r.stderr)
	}
	if re := `(?m)^01JGJ4Q2R0000000000000000C +qwen2.5:0.5b +queued +4m +0$`; !regexp.MustCompile(re).MatchString(r.stdout) {
		t.Errorf("foreman jobs: no line matching %s:\n%s", re, r.stdout)
	}
}

// `foreman jobs get` takes the job's ages on foreman's clock (the Date of its answer to
// GET /jobs/{id}), as `foreman jobs` does on GET /jobs's now, not on the CLI host's:
// with this host's clock 10 minutes ahead of foreman's, a job created 4 minutes ago was
// created "4 minutes ago", not 14. A stamp within the Date's second (which Date cuts to
// the second) is no time "from now".
func TestJobsGetTakesAgesOnForemansClock(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/jobs/01JGJ4Q2R0000000000000000C" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Date", "Thu, 02 Jan 2025 02:54:05 GMT")
		_, _ = io.WriteString(w, `{"id":"01JGJ4Q2R0000000000000000C","kind":"chat","model":"qwen2.5:0.5b","state":"working","attempts":1,`+
			`"created_at":"2025-01-02T02:50:05Z","started_at":"2025-01-02T02:54:05.6Z","finished_at":null,"error":"","result":null,"artifacts":[],"priority":"normal","program":""}`)
	}))
	t.Cleanup(srv.Close)
	r := runCLI(t, map[string]string{"FOREMAN_URL": srv.URL}, nil, nil, "jobs", "get", "01JGJ4Q2R0000000000000000C")
	if r.code != 0 {
		t.Fatalf("jobs get: exit %d, stderr %q", r.code, r.stderr)
	}
	for _, re := range []string{
		`(?m)^Created: +2025-01-02T02:50:05Z \(4 minutes ago\)$`,
		`(?m)^Started: +2025-01-02T02:54:05Z \(Less than a second ago\)$`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("foreman jobs get: no line matching %s:\n%s", re, r.stdout)
		}
	}
}
