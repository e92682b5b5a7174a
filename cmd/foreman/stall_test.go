package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

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
