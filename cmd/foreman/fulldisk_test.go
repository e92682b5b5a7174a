package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// smallDisk mounts a tmpfs of size bytes, a disk that can really fill up, for the test's
// duration. Mounting needs root (.ci/run is): elsewhere the test skips.
func smallDisk(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a real full disk needs a tmpfs mount, so root: skipped (.ci/run runs it)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+strconv.Itoa(size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (%v: %s): the real full-disk test is skipped", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fill writes zeros to path until the disk under it has no room left.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zeros := make([]byte, 64<<10)
	for {
		if _, err := f.Write(zeros); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", path, err)
			}
			return
		}
	}
}

// submitAnswer is a POST /jobs answer.
type submitAnswer struct {
	status int
	id     string
	err    string
}

// submit posts a job, with an Idempotency-Key when key is not "".
func submit(t *testing.T, addr, key string) submitAnswer {
	t.Helper()
	return submitBody(t, addr, key, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`)
}

// submitBody posts body as a job, with an Idempotency-Key when key is not "".
func submitBody(t *testing.T, addr, key, body string) submitAnswer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/jobs", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out struct {
		JobID string `json:"job_id"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("POST /jobs: %d, not JSON: %q", resp.StatusCode, raw)
	}
	return submitAnswer{resp.StatusCode, out.JobID, out.Error}
}

// The disk under the data dir really fills up (ENOSPC from the file system, not a
// JetStream limit): nats-server then stores nothing more in a stream that failed a write,
// and answers none of its publishes, until it restarts. Submits get 503 with a JSON error
// saying the store cannot write, none a 5xx of another kind; the jobs accepted before stay
// readable; /healthz names the stream's write error. Once there is room and foreman has
// restarted on the same data dir, every accepted job runs to done and submits are taken
// again.
func TestRealFullDisk(t *testing.T) {
	t.Parallel()
	disk := smallDisk(t, 16<<20)
	data := filepath.Join(disk, "data")
	fake := ollamatest.New(t)
	env := map[string]string{"FOREMAN_DATA_DIR": data}
	a := testApp(t, fake.URL, env)
	addr := a.Addr()
	release := fake.Hold("")
	accepted := []string{postJob(t, addr, "tiny-a")}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	accepted = append(accepted, postJob(t, addr, "tiny-a")) // waits in the queue

	start := time.Now()
	ballast := filepath.Join(disk, "ballast")
	fill(t, ballast)
	var refused submitAnswer
	for i := 0; i < 200 && refused.status == 0; i++ {
		switch got := submit(t, addr, ""); got.status {
		case http.StatusAccepted:
			accepted = append(accepted, got.id)
		case http.StatusServiceUnavailable:
			refused = got
		default:
			t.Fatalf("submit on a full disk: %d %q, want 202 or 503", got.status, got.err)
		}
	}
	if refused.status == 0 {
		t.Fatal("200 submits on a full disk all accepted")
	}
	t.Logf("%v: refused %+v after %d accepted", time.Since(start), refused, len(accepted))
	if !strings.Contains(refused.err, "once its disk has room") || strings.Contains(refused.err, "read-only") {
		t.Errorf("submit on a full disk: %q, want the full disk's words", refused.err)
	}
	// Later submits are refused too, saying why.
	for i := range 4 {
		key := "" // and with an Idempotency-Key, whose claim is a write too
		if i%2 == 1 {
			key = "full-disk-" + strconv.Itoa(i)
		}
		if got := submit(t, addr, key); got.status != http.StatusServiceUnavailable || !strings.Contains(got.err, "job store cannot write") {
			t.Errorf("submit (key %q) with a stream that failed a write: %d %q, want 503 job store cannot write", key, got.status, got.err)
		}
	}
	var health struct {
		Status string `json:"status"`
		NATS   string `json:"nats"`
	}
	getJSON(t, "http://"+addr+"/healthz", &health)
	if health.Status != "degraded" || !strings.Contains(health.NATS, "write error") || !strings.Contains(health.NATS, "no space left") {
		t.Errorf("/healthz on a full disk: %+v", health)
	}
	for _, id := range accepted {
		// Readable: its record, not a 404. A store busy with the full disk may answer a
		// read 503 (try again) for a while; that loses nothing, so it is asked again.
		var status int
		var body string
		waitFor(t, "job "+id+" read", func() bool {
			status, body = getRaw(t, "http://"+addr+"/jobs/"+id)
			return status != http.StatusServiceUnavailable
		})
		if status != http.StatusOK || !strings.Contains(body, `"state":`) {
			t.Errorf("accepted job %s not readable on a full disk: %d %s", id, status, body)
		}
	}

	t.Logf("%v: checked", time.Since(start))
	// Room again, and a restart: everything accepted runs, and submits are taken.
	release()
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if err := a.Shutdown(sctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	t.Logf("%v: shut down", time.Since(start))
	b := testApp(t, fake.URL, env)
	accepted = append(accepted, postJob(t, b.Addr(), "tiny-a"))
	for _, id := range accepted {
		waitFor(t, "job "+id+" to finish", func() bool { return getJob(t, b.Addr(), id).State == "done" })
	}
	t.Logf("%v: all done", time.Since(start))
	getJSON(t, "http://"+b.Addr()+"/healthz", &health)
	if health.Status != "ok" {
		t.Errorf("/healthz after the restart: %+v", health)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// getRaw is the status and body of GET url.
func getRaw(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}
