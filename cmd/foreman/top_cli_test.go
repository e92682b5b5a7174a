package main

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// heldForeman is a foreman whose fake target holds every job: one runs (held), the rest
// wait in the queue in the order given.
type heldForeman struct {
	addr    string
	fake    *ollamatest.Server
	release func()
	running string
	queued  []string
}

func startHeldForeman(t *testing.T, models ...string) *heldForeman {
	t.Helper()
	fake := ollamatest.New(t)
	h := &heldForeman{fake: fake, release: fake.Hold("")}
	t.Cleanup(h.release)
	a := testApp(t, fake.URL, nil)
	h.addr = a.Addr()
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })
	h.running = postJob(t, h.addr, "tiny-a")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatalf("the first job never reached the target: %v", err)
	}
	for _, m := range models {
		h.queued = append(h.queued, postJob(t, h.addr, m))
	}
	return h
}

// finish releases the jobs and waits until all of them are done.
func (h *heldForeman) finish(t *testing.T) {
	t.Helper()
	h.release()
	for _, id := range append([]string{h.running}, h.queued...) {
		waitFor(t, "job "+id+" to finish", func() bool { return getJob(t, h.addr, id).State == "done" })
	}
}

// runTop runs foreman top on the real clock (ages and ETAs are relative to now).
func runTop(t *testing.T, vars map[string]string, args ...string) cliResult {
	t.Helper()
	var out, errOut strings.Builder
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, getenv: func(k string) string { return vars[k] }}
	code := run(e, append([]string{"top"}, args...))
	return cliResult{stdout: out.String(), stderr: errOut.String(), code: code}
}

// Under a pipe `foreman top` prints one plain snapshot: the running job, the queue in
// order with positions and ETAs, then (after the jobs ran) an empty queue and the jobs
// among the recent ones with their wait and run times.
func TestTopPrintsOnePlainSnapshotUnderAPipe(t *testing.T) {
	t.Parallel()
	h := startHeldForeman(t, "tiny-b", "tiny-a")
	vars := map[string]string{"FOREMAN_URL": "http://" + h.addr}

	r := runTop(t, vars)
	if r.code != 0 {
		t.Fatalf("foreman top: exit %d, stderr %s", r.code, r.stderr)
	}
	if strings.Contains(r.stdout, "\x1b") {
		t.Errorf("terminal escapes in piped output:\n%q", r.stdout)
	}
	if !regexp.MustCompile(`(?m)^RUNNING  tiny-a  \(anonymous\)  \w+  \S+  ` + h.running + `$`).MatchString(r.stdout) {
		t.Errorf("no RUNNING line for %s:\n%s", h.running, r.stdout)
	}
	if !strings.Contains(r.stdout, "QUEUE (2)\n") {
		t.Errorf("no QUEUE (2):\n%s", r.stdout)
	}
	// Position 1 and 2, each with an ETA (foreman has a default duration for a model it
	// has not timed yet), in the order foreman will run them.
	var pos []string
	for _, line := range strings.Split(r.stdout, "\n") {
		for i, id := range h.queued {
			if strings.HasSuffix(line, id) {
				if !regexp.MustCompile(`^\d+\s+waiting\s+(in \S+ \(\d\d:\d\d:\d\d\)|-)\s+tiny-[ab]\s+normal\s+\(anonymous\)\s+chat\s+\S+\s+`).MatchString(line) {
					t.Errorf("queue line of job %d: %q", i, line)
				}
				pos = append(pos, strings.Fields(line)[0])
			}
		}
	}
	if strings.Join(pos, ",") != "1,2" {
		t.Errorf("queued jobs at positions %v, want 1,2:\n%s", pos, r.stdout)
	}

	j := runTop(t, vars, "--json")
	var snap topSnapshot
	if err := json.Unmarshal([]byte(j.stdout), &snap); err != nil || snap.Total != 2 || snap.Running == nil || snap.Running.ID != h.running {
		t.Errorf("top --json: %v %+v\n%s", err, snap, j.stdout)
	}

	h.finish(t)
	// The queue view follows the queue a moment later than the job records: the last job
	// may still show running (its record done) in a view with the queue already empty.
	waitFor(t, "an empty queue, nothing running", func() bool {
		r = runTop(t, vars, "--once")
		return strings.Contains(r.stdout, "QUEUE (0)\n") && strings.Contains(r.stdout, "RUNNING  -\n")
	})
	for _, id := range append([]string{h.running}, h.queued...) {
		if !regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d\s+done\s+tiny-[ab]\s+\(anonymous\)\s+\S+\s+\S+\s+` + id + `$`).MatchString(r.stdout) {
			t.Errorf("job %s is not among the recent jobs:\n%s", id, r.stdout)
		}
	}
}

// top against a foreman that is not there says so in one line.
func TestTopUnreachable(t *testing.T) {
	t.Parallel()
	r := runTop(t, map[string]string{"FOREMAN_URL": "http://127.0.0.1:1"})
	if r.code != 1 || !strings.Contains(r.stderr, "cannot reach http://127.0.0.1:1") {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
}

// The queue status line of `submit --wait` and `chat` shows a waiting job's position and
// ETA, rewritten in place, and clears itself once the job runs.
func TestQueueStatusShowsPositionUntilTheJobRuns(t *testing.T) {
	t.Parallel()
	h := startHeldForeman(t, "tiny-a", "tiny-b")
	c, err := client.New("http://" + h.addr)
	if err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	st := startQueueStatus(context.Background(), &out, c, h.queued[1])
	waitFor(t, "the status line", func() bool { return strings.Contains(out.String(), "queued: position ") })
	if got := out.String(); !regexp.MustCompile(`^\rqueued: position 2, eta \d\d:\d\d:\d\d\x1b\[K`).MatchString(got) {
		t.Errorf("status line %q", got)
	}
	st.Println(&out, "working")
	if got := out.String(); !strings.HasSuffix(got, "\r\x1b[Kworking\n") {
		t.Errorf("a line of output does not clear the status first: %q", got)
	}
	h.finish(t)
	st.Stop()
	st.Stop()
}

// While Ollama is unreachable top says the worker waits for it, and the job whose call
// failed waits in the queue; the line goes once Ollama is back.
func TestTopShowsAPausedWorker(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })
	fake.SetDown(true)
	id := postJob(t, a.Addr(), "tiny-a")
	vars := map[string]string{"FOREMAN_URL": "http://" + a.Addr()}
	var r cliResult
	waitFor(t, "top to show the pause", func() bool {
		r = runTop(t, vars, "--once")
		return strings.Contains(r.stdout, "PAUSED")
	})
	if !regexp.MustCompile(`(?m)^RUNNING  -\nPAUSED   Ollama unreachable for \S+: .+$`).MatchString(r.stdout) {
		t.Errorf("no PAUSED line under RUNNING:\n%s", r.stdout)
	}
	if !strings.Contains(r.stdout, "QUEUE (1)\n") || !strings.Contains(r.stdout, id) {
		t.Errorf("job %s not waiting in the queue:\n%s", id, r.stdout)
	}
	fake.SetDown(false)
	waitFor(t, "job "+id+" to finish", func() bool { return getJob(t, a.Addr(), id).State == "done" })
	waitFor(t, "the pause to end", func() bool {
		r = runTop(t, vars, "--once")
		return !strings.Contains(r.stdout, "PAUSED")
	})
}

// A job another foreman runs (several Macs on one NATS) shows under RUNNING as running
// elsewhere, neither running here nor in the queue.
func TestTopShowsJobsRunningElsewhere(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	started := now.Add(-90 * time.Second)
	snap := &topSnapshot{Elsewhere: []client.ElsewhereJob{{JobID: "01JGJ4Q2R0000000000000000D", Model: "qwen2.5:0.5b",
		Kind: "chat", State: "working", CreatedAt: now.Add(-2 * time.Minute), StartedAt: &started},
		{JobID: "01JGJ4Q2R0000000000000000E", Model: "tiny-b", Kind: "chat", State: "working", CreatedAt: now.Add(-2 * time.Minute),
			StartedAt: &started, Runner: "studio"},
		{JobID: "01JGJ4Q2R0000000000000000F", Model: "tiny-c", Kind: "chat", State: "loading", CreatedAt: now.Add(-2 * time.Minute),
			StartedAt: &started, Runner: "mini", RunnerGone: true}}}
	var out strings.Builder
	if err := renderTop(&out, snap, now, "http://foreman", 0, 0); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^RUNNING  -\nELSEWHERE  qwen2\.5:0\.5b  \S+  working  1m30s  01JGJ4Q2R0000000000000000D\n` +
		`ELSEWHERE  tiny-b  \S+  working  1m30s  01JGJ4Q2R0000000000000000E  on studio\n` +
		`ELSEWHERE  tiny-c  \S+  loading  1m30s  01JGJ4Q2R0000000000000000F  on mini \(foreman gone\)$`).MatchString(out.String()) {
		t.Errorf("no ELSEWHERE lines under RUNNING naming their Macs:\n%s", out.String())
	}
}

// The recent jobs are the newest finished ones however long the backlog: with more jobs
// waiting than the page of newest jobs holds, the one that finished before them shows.
func TestTopRecentJobsBehindABacklog(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, nil)
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })
	done := postJob(t, a.Addr(), "tiny-a")
	waitFor(t, "job "+done+" to finish", func() bool { return getJob(t, a.Addr(), done).State == "done" })
	release := fake.Hold("")
	defer release()
	for range 35 {
		postJob(t, a.Addr(), "tiny-a")
	}
	r := runTop(t, map[string]string{"FOREMAN_URL": "http://" + a.Addr()}, "--once")
	recent := r.stdout[strings.Index(r.stdout, "RECENT"):]
	if !strings.Contains(recent, done) {
		t.Errorf("the finished job %s is not among the recent ones behind 35 newer jobs:\n%s", done, r.stdout)
	}
}

// In a terminal a frame fits its height and width: with a long backlog the title and the
// running job stay on screen, the queue and the recent jobs list what fits (the queue
// saying how many more wait), and a cut line ends in "…".
func TestTopFrameFitsTheTerminal(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	started := now.Add(-time.Second)
	snap := &topSnapshot{
		Running: &client.Job{ID: "01JGJ4Q2R0000000000000000R", Model: "tiny-a", State: "working", CreatedAt: now, StartedAt: &started},
		Loaded:  []string{"tiny-a:latest"}, Total: 300,
	}
	for i := range topQueueRows {
		snap.Queued = append(snap.Queued, client.QueuedJob{JobID: fmt.Sprintf("01JGJ4Q2R00000000000000%03d", i), Model: "tiny-a",
			Kind: "chat", Priority: "normal", Program: "alice", CreatedAt: now, QueuePosition: i + 1, ETA: now.Add(time.Duration(i) * time.Second)})
	}
	for i := range topRecentRows {
		snap.Recent = append(snap.Recent, client.Job{ID: fmt.Sprintf("01JGJ4Q2R00000000000000F%02d", i), Model: "tiny-a", State: "done",
			CreatedAt: now, StartedAt: &started, FinishedAt: &now})
	}
	for _, size := range []struct{ width, height int }{{100, 28}, {80, 24}, {50, 10}} {
		var out strings.Builder
		if err := renderTop(&out, snap, now, "http://foreman", size.width, size.height); err != nil {
			t.Fatal(err)
		}
		text := out.String()
		lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
		if len(lines) > size.height {
			t.Errorf("%dx%d: %d lines:\n%s", size.width, size.height, len(lines), text)
		}
		if !strings.HasPrefix(lines[0], "foreman http://foreman") || !strings.HasPrefix(lines[2], "RUNNING") {
			t.Errorf("%dx%d: the title and the running job are not on top:\n%s", size.width, size.height, text)
		}
		cut := false
		for _, l := range lines {
			if n := utf8.RuneCountInString(l); n > size.width {
				t.Errorf("%dx%d: line of %d runes: %q", size.width, size.height, n, l)
			}
			cut = cut || strings.HasSuffix(l, "…")
		}
		if !cut && size.width < 90 { // the queue rows are 90 runes wide
			t.Errorf("%dx%d: no line marked as cut:\n%s", size.width, size.height, text)
		}
		rows := strings.Count(text, "01JGJ4Q2R00000000000000") // queue rows (the IDs may be cut)
		if size.height >= 24 {
			m := regexp.MustCompile(`\.\.\. and (\d+) more`).FindStringSubmatch(text)
			if m == nil || rows == 0 || !strings.Contains(text, "RECENT") {
				t.Errorf("%dx%d: want queue rows, a count of the rest and recent jobs:\n%s", size.width, size.height, text)
				continue
			}
			if queued := strings.Count(text, "normal"); queued+atoi(t, m[1]) != 300 {
				t.Errorf("%dx%d: %d rows + %s more != 300 waiting:\n%s", size.width, size.height, queued, m[1], text)
			}
		}
	}
	// Without a terminal size everything is listed.
	var out strings.Builder
	if err := renderTop(&out, snap, now, "http://foreman", 0, 0); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "normal"); n != topQueueRows || !strings.Contains(out.String(), "... and 280 more") {
		t.Errorf("unfitted frame lists %d queue rows:\n%s", n, out.String())
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestLiveTopTimeoutSaysWhatSetIt: a live refresh that foreman left unanswered names
// the bound that ended it. Without --timeout (or with one above 10 s) that is live top's
// own 10 s per refresh, which the frame said was "(--timeout)", a flag never given;
// a shorter --timeout is named as the flag.
func TestLiveTopTimeoutSaysWhatSetIt(t *testing.T) {
	t.Parallel()
	e := &env{getenv: func(string) string { return "" }, now: func() time.Time { return fixedNow }}
	for _, tc := range []struct {
		timeout     time.Duration
		within, not string
	}{
		{defaultTimeout, "within 10s (each refresh of the live view waits at most 10s", "(--timeout)"},
		{0, "within 10s (each refresh of the live view waits at most 10s", "(--timeout)"},
		{time.Minute, "within 10s (each refresh of the live view waits at most 10s", "(--timeout)"},
		{3 * time.Second, "within 3s (--timeout)", "live view"},
	} {
		f := &clientFlags{url: "http://127.0.0.1:9", timeout: tc.timeout}
		frame := liveFrame(e, "http://127.0.0.1:9", liveRefresh(f), nil, context.DeadlineExceeded, 0, 0)
		if !strings.Contains(frame, "no answer from http://127.0.0.1:9 "+tc.within) || strings.Contains(frame, tc.not) {
			t.Errorf("--timeout %s: frame %q; want it to say %q and not %q", tc.timeout, frame, tc.within, tc.not)
		}
	}
}

// top's --timeout help says what bounds a live refresh: its own 10 s, not only --timeout.
func TestTopTimeoutHelpNamesTheLiveBound(t *testing.T) {
	t.Parallel()
	r := runCLI(t, nil, nil, nil, "top", "--help")
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.Contains(line, "--timeout") {
			if !strings.Contains(line, "each refresh waits at most "+refreshTimeout.String()) {
				t.Errorf("top --help's --timeout line does not name the live view's bound (%s): %s", refreshTimeout, line)
			}
			return
		}
	}
	t.Errorf("top --help has no --timeout line:\n%s", r.stdout)
}
