package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A foreman whose log pipe closes (the `| tee` it ran into ended, a log shipper
// restarted) goes on serving: its log lines are lost, its jobs are not. Go kills a
// process that writes to a broken pipe on its standard error, and foreman died at its
// next log line, as a crash.
func TestServeOutlivesItsClosedLogPipe(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	cmd := exec.Command(os.Args[0], "serve")
	cmd.Env = append(os.Environ(), "FOREMAN_TEST_RUN_MAIN=1", "FOREMAN_ADDR=127.0.0.1:0",
		"FOREMAN_DATA_DIR="+t.TempDir(), "FOREMAN_OLLAMA_URL="+fake.URL, "FOREMAN_POLL_INTERVAL=100ms")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	child := reapChild(t, cmd)
	var addr string
	sc := bufio.NewScanner(stderr)
	for addr == "" && sc.Scan() {
		if m := servingLine.FindStringSubmatch(sc.Text()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		t.Fatalf("foreman did not say it serves: %v", sc.Err())
	}
	stderr.Close() // the reader is gone: the next log line meets a broken pipe

	reachable := func() (bool, error) {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		var h struct {
			Targets []struct {
				Reachable bool `json:"reachable"`
			} `json:"targets"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil || len(h.Targets) == 0 {
			return false, err
		}
		return h.Targets[0].Reachable, nil
	}
	// Ollama goes down and comes back: foreman logs the first, and the poll that sees the
	// second comes after that line was written.
	for _, down := range []bool{true, false} {
		fake.SetDown(down)
		deadline := time.After(30 * time.Second)
		for {
			ok, err := reachable()
			if err != nil {
				select {
				case <-child.exited:
					t.Fatalf("foreman died after its log pipe closed: %v", child.err)
				case <-time.After(time.Second): // a moment for the exit to be reaped
				}
				t.Fatalf("foreman stopped answering after its log pipe closed: %v", err)
			}
			if ok == !down {
				break
			}
			select {
			case <-deadline:
				t.Fatalf("the target never seen reachable=%v", !down)
			case <-time.After(20 * time.Millisecond): // polling with a deadline
			}
		}
	}
}
