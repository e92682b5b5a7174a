package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// postJob submits an async chat job and returns its id.
func postJob(t *testing.T, addr, model string) string {
	t.Helper()
	body := `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`
	resp, err := http.Post("http://"+addr+"/jobs", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		JobID string `json:"job_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusAccepted || out.JobID == "" {
		t.Fatalf("POST /jobs: %d %+v %v", resp.StatusCode, out, err)
	}
	return out.JobID
}

type jobView struct {
	State    string `json:"state"`
	Attempts int    `json:"attempts"`
	Error    string `json:"error"`
}

func getJob(t *testing.T, addr, id string) jobView {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/jobs/" + id)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var j jobView
	if err := json.NewDecoder(resp.Body).Decode(&j); err != nil {
		t.Fatal(err)
	}
	return j
}

// A model whose runner hangs before its first byte while Ollama's /api/tags and /api/ps
// still answer: the job fails after its attempts instead of holding the queue, /healthz
// says degraded with the reason, the next job runs, and its success clears /healthz.
func TestHungTargetDegradesHealthzUntilAJobSucceeds(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	release := fake.Hold("tiny-a")
	t.Cleanup(release)
	a := testApp(t, fake.URL, map[string]string{"FOREMAN_FIRST_BYTE_TIMEOUT": "1s", "FOREMAN_MAX_ATTEMPTS": "2"})
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })

	hung := postJob(t, a.Addr(), "tiny-a")
	var j jobView
	waitFor(t, "the hung job to fail", func() bool { j = getJob(t, a.Addr(), hung); return j.State == "failed" })
	if j.Error != "attempts exhausted: target stalled: no response for 1s" || j.Attempts != 2 {
		t.Errorf("hung job: %+v", j)
	}
	code, h := getHealthz(t, a.Addr())
	target, _ := h["target"].(map[string]any)
	if code != 200 || h["status"] != "degraded" || h["degraded"] != true ||
		target["error"] != "stalled: no response for 1s on job "+hung || target["reachable"] != true {
		t.Fatalf("/healthz after the stall: %d %v", code, h)
	}

	next := postJob(t, a.Addr(), "tiny-b")
	waitFor(t, "the next job to run", func() bool { j = getJob(t, a.Addr(), next); return j.State == "done" })
	code, h = getHealthz(t, a.Addr())
	if target, _ := h["target"].(map[string]any); code != 200 || h["status"] != "ok" || target["error"] != nil {
		t.Fatalf("/healthz after a job succeeded: %d %v", code, h)
	}
}

// The embedding model's warm-up runs in the inventory's poll loop: a target that hangs on
// it must not stop the polls (and so /healthz) for good.
func TestHungWarmUpDoesNotStopPolling(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	fake.FailNextOn("/api/embed", 1, ollamatest.Hang)
	a := testApp(t, fake.URL, map[string]string{
		"FOREMAN_EMBED_MODEL": "tiny-embed", "FOREMAN_POLL_INTERVAL": "100ms", "FOREMAN_FIRST_BYTE_TIMEOUT": "200ms",
	})
	waitFor(t, "polls after the hung warm-up", func() bool {
		tags := 0
		for _, c := range fake.Calls() {
			if c.Path == "/api/tags" {
				tags++
			}
		}
		return tags >= 3
	})
	if !a.Inventory().Snapshot().Polled {
		t.Fatal("no successful poll")
	}
}

// A target that drips a byte at a time of a line that never ends, its polls answered:
// a streamed sync chat gets a clear error once its attempts are spent (each given up at
// the first-byte limit: no line came), /healthz and /metrics say the target is degraded, and the next call
// runs. Counted by bytes, the idle limit never ran out: the caller and the worker waited
// for good.
func TestDrippingTargetEndsASyncChat(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	fake.FailNext(2, ollamatest.Drip(10*time.Millisecond, "a"))
	a := testApp(t, fake.URL, map[string]string{"FOREMAN_FIRST_BYTE_TIMEOUT": "1s", "FOREMAN_MAX_ATTEMPTS": "2"})
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+a.Addr()+"/api/chat", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("chat answer: %v after %q", err, raw)
	}
	const why = "stalled: no line or event with data for 1s, only a trickle of bytes"
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(raw), "target "+why) || !strings.HasPrefix(string(raw), `{"error":`) {
		t.Errorf("chat against a dripping target: %d %s, want a 502 JSON error naming the trickle", resp.StatusCode, raw)
	}
	code, h := getHealthz(t, a.Addr())
	if target, _ := h["target"].(map[string]any); code != 200 || h["status"] != "degraded" || !strings.Contains(fmt.Sprint(target["error"]), why) {
		t.Errorf("/healthz after the drip: %d %v", code, h)
	}
	if m := getMetrics(t, a.Addr()); !strings.Contains(m, "\nforeman_target_degraded 1\n") {
		t.Errorf("/metrics after the drip does not say degraded:\n%s", m)
	}
	next := postJob(t, a.Addr(), "tiny-a")
	waitFor(t, "the next job to run", func() bool { return getJob(t, a.Addr(), next).State == "done" })
}

// getMetrics reads /metrics as text.
func getMetrics(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return string(raw)
}
