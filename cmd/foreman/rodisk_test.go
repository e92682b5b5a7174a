package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// ext4Disk is a loop-mounted ext4 image mounted with errors=remount-ro: a disk the kernel
// really remounts read-only, as it does after an I/O error, by its own error trigger.
type ext4Disk struct {
	img, dir string
	dev      string // the loop device's name, e.g. loop0
}

// newExt4Disk makes and mounts a 64 MiB ext4 image for the test's duration. It needs root,
// e2fsprogs, loop devices and ext4's trigger_fs_error (.ci/run has them): elsewhere the
// test skips, saying which is missing.
func newExt4Disk(t *testing.T) *ext4Disk {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a read-only disk needs a loop-mounted ext4, so root: skipped (.ci/run runs it)")
	}
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "losetup", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s (e2fsprogs, util-linux): the read-only disk test is skipped", tool)
		}
	}
	tmp := t.TempDir()
	d := &ext4Disk{img: filepath.Join(tmp, "disk.img"), dir: filepath.Join(tmp, "mnt")}
	if err := os.Mkdir(d.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(d.img)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Truncate(64 << 20)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", d.img).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v: %s: the read-only disk test is skipped", err, out)
	}
	t.Cleanup(func() {
		if mountSource(d.dir) != "" {
			if out, err := exec.Command("umount", "-l", d.dir).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", d.dir, err, out)
			}
		}
		// A mount -o loop device is freed with its umount (autoclear); a lazy one, or
		// one left by a failed step, is detached here.
		out, _ := exec.Command("losetup", "-j", d.img).Output()
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if dev, _, ok := strings.Cut(line, ":"); ok {
				_ = exec.Command("losetup", "-d", dev).Run()
			}
		}
	})
	if out, err := exec.Command("mount", "-o", "loop,errors=remount-ro", d.img, d.dir).CombinedOutput(); err != nil {
		t.Skipf("cannot loop-mount an ext4 image (%v: %s): the read-only disk test is skipped", err, out)
	}
	d.dev = filepath.Base(mountSource(d.dir))
	if _, err := os.Stat(d.trigger()); err != nil {
		t.Skipf("no ext4 error trigger for %s (%v): the read-only disk test is skipped", d.dev, err)
	}
	return d
}

func (d *ext4Disk) trigger() string { return "/sys/fs/ext4/" + d.dev + "/trigger_fs_error" }

// mountSource is the device mounted on dir per /proc/mounts, "" when none.
func mountSource(dir string) string { src, _ := mountEntry(dir); return src }

// mountEntry is the last /proc/mounts line of dir: its device and options.
func mountEntry(dir string) (source, options string) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "", ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 4 && fields[1] == dir {
			source, options = fields[0], fields[3]
		}
	}
	return source, options
}

// fail makes ext4 record an error: with errors=remount-ro the kernel remounts the disk
// read-only at once, with every file foreman holds open.
func (d *ext4Disk) fail(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(d.trigger(), []byte("1\n"), 0); err != nil {
		t.Fatalf("ext4 error trigger: %v", err)
	}
	// /proc/mounts says "emergency_ro" (newer kernels) or "ro": a write says it either way.
	if err := os.WriteFile(filepath.Join(d.dir, "probe"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		_, opts := mountEntry(d.dir)
		t.Fatalf("%s not read-only after the error trigger (%s): a write: %v", d.dir, opts, err)
	}
}

// repair does what the operator does: unmount, e2fsck -fy, mount again (read-write, or
// with more options).
func (d *ext4Disk) repair(t *testing.T, opts ...string) {
	t.Helper()
	if out, err := exec.Command("umount", d.dir).CombinedOutput(); err != nil {
		t.Fatalf("umount %s: %v: %s", d.dir, err, out)
	}
	// 1: errors corrected, the exit status of a disk the trigger marked.
	if out, err := exec.Command("e2fsck", "-fy", d.img).CombinedOutput(); err != nil {
		var x *exec.ExitError
		if !errors.As(err, &x) || x.ExitCode() > 1 {
			t.Fatalf("e2fsck: %v: %s", err, out)
		}
	}
	o := strings.Join(append([]string{"loop", "errors=remount-ro"}, opts...), ",")
	if out, err := exec.Command("mount", "-o", o, d.img, d.dir).CombinedOutput(); err != nil {
		t.Fatalf("mount %s: %v: %s", d.dir, err, out)
	}
	// The mount may take another loop device than before: the old one, freed by the
	// umount, may be a parallel test's disk by now, and its error trigger with it.
	d.dev = filepath.Base(mountSource(d.dir))
}

// chatAnswer is a sync chat's answer: status, the job's id (X-Foreman-Job-Id) and body.
type chatAnswer struct {
	status int
	jobID  string
	body   string
	err    error
	took   time.Duration
}

// syncChat posts a non-streamed chat saying content.
func syncChat(ctx context.Context, addr, content string) chatAnswer {
	start := time.Now()
	body := `{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"` + content + `"}]}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/api/chat", strings.NewReader(body))
	if err != nil {
		return chatAnswer{err: err}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return chatAnswer{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return chatAnswer{resp.StatusCode, resp.Header.Get("X-Foreman-Job-Id"), string(raw), err, time.Since(start)}
}

// postJobSaying submits an async chat job whose prompt is content, so the fake's calls
// tell which job they ran.
func postJobSaying(t *testing.T, addr, content string) submitAnswer {
	t.Helper()
	return submitBody(t, addr, "", `{"model":"tiny-a","messages":[{"role":"user","content":"`+content+`"}]}`)
}

// completedRuns counts the fake's chats of content that ran to their end.
func completedRuns(fake *ollamatest.Server, content string) int {
	n := 0
	for _, c := range fake.Calls() {
		if c.Path == "/api/chat" && c.Finished && !c.Canceled && strings.Contains(string(c.Body), `"`+content+`"`) {
			n++
		}
	}
	return n
}

// stop sends SIGTERM and waits, bounded, for the child to exit.
func (c *childForeman) stop(t *testing.T, within time.Duration) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.exited:
	case <-time.After(within):
		t.Fatalf("foreman did not exit within %v of SIGTERM", within)
	}
}

// queuedIDs is GET /queue's waiting jobs, by id.
func queuedIDs(t *testing.T, addr string) []string {
	t.Helper()
	var q struct {
		Queued []struct {
			JobID string `json:"job_id"`
		} `json:"queued"`
	}
	getJSON(t, "http://"+addr+"/queue?limit=100", &q)
	var ids []string
	for _, j := range q.Queued {
		ids = append(ids, j.JobID)
	}
	return ids
}

// The disk under the data dir goes read-only while foreman runs (ext4's errors=remount-ro
// after an I/O error), with a job running, jobs and a sync chat waiting. New submits and
// chats get a 503 saying the data directory went read-only, never a 202 for a job that
// is not on disk; the waiting sync chat gets it too, within a look at its job; /healthz
// names the read-only file system; the accepted jobs stay readable. Once foreman is
// stopped, the disk repaired and foreman started again on it, every job accepted before
// runs to done exactly once, and the answered sync chat's job ends canceled, never run.
func TestReadOnlyDisk(t *testing.T) {
	t.Parallel()
	d := newExt4Disk(t)
	data := filepath.Join(d.dir, "data")
	fake := ollamatest.New(t)
	env := []string{
		"FOREMAN_ADDR=127.0.0.1:0", "FOREMAN_DATA_DIR=" + data, "FOREMAN_OLLAMA_URL=" + fake.URL,
		"FOREMAN_SHUTDOWN_TIMEOUT=10s",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	release := fake.Hold("")
	defer release()
	first := startChild(t, env...)
	addr := first.addr

	var accepted []string // the prompts of the jobs answered 202
	ids := map[string]string{}
	post := func(content string) submitAnswer {
		got := postJobSaying(t, addr, content)
		if got.status == http.StatusAccepted {
			accepted = append(accepted, content)
			ids[content] = got.id
		}
		return got
	}
	if got := post("ro-job-1"); got.status != http.StatusAccepted {
		t.Fatalf("submit: %+v", got)
	}
	if err := fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"ro-job-2", "ro-job-3"} {
		if got := post(c); got.status != http.StatusAccepted {
			t.Fatalf("submit: %+v", got)
		}
	}
	waiting := make(chan chatAnswer, 1)
	go func() { waiting <- syncChat(ctx, addr, "ro-sync-waiting") }()
	waitFor(t, "the sync chat queued", func() bool { return len(queuedIDs(t, addr)) == 3 })

	start := time.Now()
	d.fail(t)

	// A new submit: refused, saying why, within the store's retry window; a 202 would be
	// a job that is not on disk. A write that went unanswered before the fault was found
	// (its check is bounded) is refused as the store's passing trouble ("temporarily
	// unavailable, retry shortly"): a 503 too, and the retry gets the fault's words.
	var refused submitAnswer
	for i := 0; i < 10 && refused.status == 0; i++ {
		switch got := post("ro-after-" + string(rune('a'+i))); got.status {
		case http.StatusAccepted:
			t.Errorf("submit %d on a read-only disk: 202 %s, a job that is not on disk", i, got.id)
		case http.StatusServiceUnavailable:
			if strings.HasPrefix(got.err, "job store cannot write") {
				refused = got
			} else {
				t.Logf("%v: submit %d refused before the fault was known: %q", time.Since(start), i, got.err)
			}
		default:
			t.Fatalf("submit on a read-only disk: %d %q, want 503", got.status, got.err)
		}
	}
	t.Logf("%v: submit refused: %q", time.Since(start), refused.err)
	if !strings.HasPrefix(refused.err, "job store cannot write") || !strings.Contains(refused.err, "its data directory went read-only") ||
		strings.Contains(refused.err, "has room") {
		t.Errorf("submit on a read-only disk: %+v, want 503 job store cannot write: its data directory went read-only", refused)
	}
	before := time.Now()
	if got := post("ro-after-fault"); got.status != http.StatusServiceUnavailable || got.err != refused.err {
		t.Errorf("submit with the fault known: %+v, want the same 503", got)
	}
	if took := time.Since(before); took > 4*time.Second { // not the 5 s retry window
		t.Errorf("submit with the fault known took %v, want it refused at once", took)
	}

	// A new sync chat: the same 503, not a wait.
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	chat := syncChat(cctx, addr, "ro-sync-new")
	ccancel()
	t.Logf("new sync chat: %d %s in %v", chat.status, chat.body, chat.took)
	var chatErr struct {
		Error string `json:"error"`
	}
	if chat.err != nil || chat.status != http.StatusServiceUnavailable || json.Unmarshal([]byte(chat.body), &chatErr) != nil ||
		chatErr.Error != refused.err {
		t.Errorf("sync chat on a read-only disk: %d %q %v, want 503 %q", chat.status, chat.body, chat.err, refused.err)
	}

	var health struct {
		Status string `json:"status"`
		NATS   string `json:"nats"`
	}
	getJSON(t, "http://"+addr+"/healthz", &health)
	if health.Status != "degraded" || !strings.Contains(health.NATS, "read-only file system") {
		t.Errorf("/healthz on a read-only disk: %+v", health)
	}
	for _, c := range accepted {
		var status int
		var body string
		waitFor(t, "job "+ids[c]+" read", func() bool {
			status, body = getRaw(t, "http://"+addr+"/jobs/"+ids[c])
			return status != http.StatusServiceUnavailable
		})
		if status != http.StatusOK || !strings.Contains(body, `"state":`) {
			t.Errorf("accepted job %s not readable on a read-only disk: %d %s", ids[c], status, body)
		}
	}
	// The sync chat that waited in the queue: its job cannot start before a restart
	// (its start is a write), so its caller is told so, within a check of its record
	// (syncCheckInterval), not kept waiting for the operator.
	var waitingID string
	select {
	case got := <-waiting:
		waitingID = got.jobID
		var e struct {
			Error string `json:"error"`
		}
		t.Logf("%v: the waiting sync chat: %d %s after %v", time.Since(start), got.status, got.body, got.took)
		if got.err != nil || got.status != http.StatusServiceUnavailable || json.Unmarshal([]byte(got.body), &e) != nil || e.Error != refused.err {
			t.Errorf("the sync chat waiting on a read-only disk: %d %q %v, want 503 %q", got.status, got.body, got.err, refused.err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("the sync chat waiting on a read-only disk still waits 30 s after the fault was known")
	}

	t.Logf("%v: checked; stopping", time.Since(start))
	first.stop(t, time.Minute)
	t.Logf("%v: stopped: %v", time.Since(start), first.err)
	d.repair(t)
	second := startChild(t, env...)
	release()
	for _, c := range accepted {
		waitChildJobDone(t, ctx, second.addr, ids[c])
	}
	for _, c := range accepted {
		if n := completedRuns(fake, c); n != 1 {
			t.Errorf("job %s (%s) ran to its end %d times, want once", ids[c], c, n)
		}
	}
	if waitingID != "" {
		// Its caller was answered: the restart cancels it, never run (ADR-0024).
		var j jobView
		waitFor(t, "the answered sync job "+waitingID+" to end", func() bool {
			j = getJob(t, second.addr, waitingID)
			return j.State != "queued"
		})
		if j.State != "canceled" || j.Attempts != 0 {
			t.Errorf("the sync job whose caller was answered on the read-only disk, after the restart: %+v, want canceled, never run", j)
		}
	}
	for _, c := range []string{"ro-sync-waiting", "ro-sync-new"} {
		if n := completedRuns(fake, c); n != 0 {
			t.Errorf("sync chat %s, whose caller was answered, ran %d times after the restart", c, n)
		}
	}
	getJSON(t, "http://"+second.addr+"/healthz", &health)
	if health.Status != "ok" {
		t.Errorf("/healthz after the repair and restart: %+v", health)
	}
}

// A foreman started on a data directory that is read-only from the start (a disk the
// kernel remounted read-only before a reboot's fsck, a read-only mount) exits at once
// with an error that names the directory and the read-only file system: it does not
// serve, and does not hang.
func TestStartOnReadOnlyDataDir(t *testing.T) {
	t.Parallel()
	d := newExt4Disk(t)
	data := filepath.Join(d.dir, "data")
	fake := ollamatest.New(t)
	env := []string{"FOREMAN_ADDR=127.0.0.1:0", "FOREMAN_DATA_DIR=" + data, "FOREMAN_OLLAMA_URL=" + fake.URL}
	// An existing store: a foreman ran on it and stopped.
	first := startChild(t, env...)
	postJob(t, first.addr, "tiny-a")
	first.stop(t, time.Minute)
	for _, c := range []struct {
		name    string
		remount func(t *testing.T)
	}{
		{"mounted ro", func(t *testing.T) { d.repair(t, "ro") }},
		{"went ro", func(t *testing.T) { d.repair(t); d.fail(t) }},
	} {
		c.remount(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, os.Args[0], "serve")
		cmd.Env = append(os.Environ(), append([]string{"FOREMAN_TEST_RUN_MAIN=1"}, env...)...)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		took, timedOut := time.Since(start), ctx.Err() != nil
		cancel()
		t.Logf("%s: %v after %v:\n%s", c.name, err, took, out)
		var x *exec.ExitError
		if !errors.As(err, &x) || x.ExitCode() == 0 || timedOut {
			t.Errorf("%s: foreman on a read-only data dir: %v after %v, want a non-zero exit", c.name, err, took)
		}
		if !strings.Contains(string(out), data) || !strings.Contains(string(out), "read-only file system") {
			t.Errorf("%s: foreman's words do not name %s and the read-only file system:\n%s", c.name, data, out)
		}
	}
}
