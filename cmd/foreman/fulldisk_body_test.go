package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// submitLarge posts a job whose body (about 3 MB) is too large for a queue message: it
// goes to the object store (ADR-0019). It returns the answer and how long it took.
func submitLarge(t *testing.T, addr string) (submitAnswer, time.Duration) {
	t.Helper()
	body := `{"model":"tiny-a","messages":[{"role":"user","content":"` + strings.Repeat("a", 3<<20) + `"}]}`
	start := time.Now()
	resp, err := http.Post("http://"+addr+"/jobs", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	took := time.Since(start)
	var out struct {
		JobID string `json:"job_id"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("POST /jobs: %d, not JSON: %q", resp.StatusCode, raw)
	}
	return submitAnswer{resp.StatusCode, out.JobID, out.Error}, took
}

// Large submits on a disk that really fills up: their bodies go to the object store,
// whose stream then fails a write and answers none of its publishes. A submit is
// answered 202 or 503, never a 500 (the body put's bare timeout was one, after the
// submit's 10 s), and once the fault is found every later one is refused at once with
// the same "job store cannot write" as a small submit, /healthz naming the write error.
func TestRealFullDiskLargeBodies(t *testing.T) {
	t.Parallel()
	disk := smallDisk(t, 40<<20)
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, map[string]string{"FOREMAN_DATA_DIR": filepath.Join(disk, "data")})
	addr := a.Addr()
	ballast := filepath.Join(disk, "ballast")
	fill(t, ballast)

	failed := 0
	for i := 0; i < 8 && failed < 3; i++ {
		got, took := submitLarge(t, addr)
		t.Logf("large submit %d on a full disk: %d %q in %v", i, got.status, got.err, took.Round(time.Millisecond))
		switch {
		case got.status == http.StatusAccepted:
		case got.status == http.StatusServiceUnavailable && strings.Contains(got.err, "job store cannot write"):
			if failed > 0 && took > 5*time.Second {
				t.Errorf("large submit %d refused after %v, with the fault known: want it at once", i, took)
			}
			failed++
		case got.status == http.StatusServiceUnavailable:
		default:
			t.Fatalf("large submit %d on a full disk: %d %q, want 202 or 503", i, got.status, got.err)
		}
	}
	if failed < 3 {
		t.Fatalf("%d large submits on a full disk refused with job store cannot write, want 3", failed)
	}
	var health struct {
		Status string `json:"status"`
		NATS   string `json:"nats"`
	}
	getJSON(t, "http://"+addr+"/healthz", &health)
	if health.Status != "degraded" || !strings.Contains(health.NATS, "write error") {
		t.Errorf("/healthz on a full disk: %+v", health)
	}
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}
