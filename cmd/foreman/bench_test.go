package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// The bench commands run briefly against a whole foreman in this process and the fake
// Ollama behind it, all on loopback. Only shapes are checked, never a time.
func TestBench(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, map[string]string{"FOREMAN_AUTH_TOKEN": "bench-token"})
	vars := map[string]string{"FOREMAN_URL": "http://" + a.Addr(), "FOREMAN_TOKEN": "bench-token"}

	t.Run("chat", func(t *testing.T) {
		t.Parallel()
		r := runCLI(t, vars, nil, nil, "bench", "chat", "--direct", fake.URL, "-m", "tiny-a", "-n", "3", "--warmup", "1")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		for _, row := range []string{`chat tiny-a: 3 pairs, whole answer`, `(?m)^\s+foreman\s+\d+\.\d\dms`, `(?m)^\s+direct\s+\d+\.\d\dms`, `(?m)^\s+added\s+[-+]\d+\.\d\dms\s+[-+]\d+\.\d\dms`} {
			if !regexp.MustCompile(row).MatchString(r.stdout) {
				t.Errorf("no %q in\n%s", row, r.stdout)
			}
		}
		// Each side got the warm-up and the measured chats, foreman through its queue.
		chats := 0
		for _, c := range fake.Calls() {
			if c.Path == "/api/chat" && c.Model == "tiny-a:latest" && strings.Contains(string(c.Body), "Say hello.") {
				chats++
			}
		}
		if chats != 8 {
			t.Errorf("the target got %d chats, want 8 (4 direct, 4 through foreman)", chats)
		}
	})
	t.Run("chat stream json", func(t *testing.T) {
		t.Parallel()
		r := runCLI(t, vars, nil, nil, "bench", "chat", "--direct", fake.URL, "-m", "tiny-b", "-n", "2", "--stream", "--idle", "1ms", "--json")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		var rep chatReport
		if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
			t.Fatalf("%v in %s", err, r.stdout)
		}
		if rep.Measure != "first_byte" || rep.Foreman.N != 2 || rep.Direct.N != 2 || rep.Foreman.P50 <= 0 || rep.IdleMS != 1 {
			t.Errorf("report %+v", rep)
		}
	})
	t.Run("chat also", func(t *testing.T) {
		t.Parallel()
		b := testApp(t, fake.URL, map[string]string{"FOREMAN_AUTH_TOKEN": "bench-token"})
		r := runCLI(t, vars, nil, nil, "bench", "chat", "--direct", fake.URL, "--also", "http://"+b.Addr(), "-m", "tiny-a",
			"--prompt", "Also hello.", "-n", "3", "--warmup", "1", "--json")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		var rep chatReport
		if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
			t.Fatalf("%v in %s", err, r.stdout)
		}
		if rep.Foreman.N != 3 || rep.Direct.N != 3 || len(rep.Also) != 1 || rep.Also[0].URL != "http://"+b.Addr() ||
			rep.Also[0].Times.N != 3 || rep.Also[0].Times.P50 <= 0 {
			t.Errorf("report %+v", rep)
		}
		// Three sides, each with the warm-up round and the measured ones.
		chats := 0
		for _, c := range fake.Calls() {
			if c.Path == "/api/chat" && strings.Contains(string(c.Body), "Also hello.") {
				chats++
			}
		}
		if chats != 12 {
			t.Errorf("the target got %d chats, want 12 (4 direct, 4 through each foreman)", chats)
		}
	})
	// A side that refuses is named once, by its role and URL: the error said
	// "foreman: foreman: http://...", the CLI's prefix then the side's name.
	t.Run("chat error names its side", func(t *testing.T) {
		t.Parallel()
		bad := map[string]string{"FOREMAN_URL": vars["FOREMAN_URL"], "FOREMAN_TOKEN": "wrong"}
		r := runCLI(t, bad, nil, nil, "bench", "chat", "--direct", fake.URL, "-m", "tiny-a", "-n", "1", "--warmup", "0")
		want := "foreman: chat through foreman: " + vars["FOREMAN_URL"] + " answered 401 "
		if r.code == 0 || !strings.HasPrefix(r.stderr, want) {
			t.Errorf("exit %d, stderr %q; want it to start %q", r.code, r.stderr, want)
		}
	})
	t.Run("chat hides credentials", func(t *testing.T) {
		t.Parallel()
		refusing := ollamatest.New(t)
		refusing.FailNext(100, ollamatest.FailStatus(http.StatusUnauthorized, "no"))
		for _, args := range [][]string{
			{"--direct", strings.Replace(refusing.URL, "://", "://user:s3cret@", 1)},
			{"--direct", "http://s3cret@" + closedPort(t)},
			{"--direct", fake.URL, "--url", "http://user:s3cret@127.0.0.1:bad"},
			{"--direct", fake.URL, "--also", "ftp://user:s3cret@127.0.0.1:1"},
			{"--direct", fake.URL, "--also", "http://s3cret@" + closedPort(t)},
		} {
			r := runCLI(t, vars, nil, nil, append([]string{"bench", "chat", "-m", "tiny-a", "--prompt", "Hidden hello.", "-n", "1", "--warmup", "0"}, args...)...)
			if r.code == 0 || r.stderr == "" || strings.Contains(r.stderr+r.stdout, "s3cret") {
				t.Errorf("bench chat %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
			}
		}
	})
	t.Run("submit", func(t *testing.T) {
		t.Parallel()
		r := runCLI(t, vars, nil, nil, "bench", "submit", "--callers", "4", "-n", "20", "--json")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		var rep submitReport
		if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
			t.Fatalf("%v in %s", err, r.stdout)
		}
		if rep.Accepted != 20 || rep.Callers != 4 || len(rep.Refused) != 0 || rep.PerSec <= 0 || rep.Latency.N != 20 {
			t.Errorf("report %+v", rep)
		}
	})
	t.Run("submit hides credentials", func(t *testing.T) {
		t.Parallel()
		for _, u := range []string{"http://s3cret@" + closedPort(t), "http://user:s3cret@127.0.0.1:bad"} {
			r := runCLI(t, nil, nil, nil, "bench", "submit", "--url", u, "-n", "1", "--json")
			if r.code == 0 || !strings.Contains(r.stdout, `"first_error"`) || strings.Contains(r.stderr+r.stdout, "s3cret") {
				t.Errorf("bench submit --url %s: exit %d\nstdout: %s\nstderr: %s", u, r.code, r.stdout, r.stderr)
			}
		}
	})
	t.Run("submit refused", func(t *testing.T) {
		t.Parallel()
		bad := map[string]string{"FOREMAN_URL": vars["FOREMAN_URL"], "FOREMAN_TOKEN": "wrong"}
		r := runCLI(t, bad, nil, nil, "bench", "submit", "--callers", "2", "-n", "5")
		if r.code == 0 || !strings.Contains(r.stdout, "not 202: 401: 5") || !strings.Contains(r.stderr, "no submit was accepted") {
			t.Errorf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("fsync", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		r := runCLI(t, nil, nil, nil, "bench", "fsync", "--dir", dir, "-n", "5")
		if r.code != 0 || !regexp.MustCompile(`(?m)^\s+5\s+\d+\s+\d+\.\d\dms`).MatchString(r.stdout) {
			t.Errorf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("fsync after idle", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		start := time.Now()
		r := runCLI(t, nil, nil, nil, "bench", "fsync", "--dir", dir, "-n", "3", "--idle", "20ms", "--json")
		var rep struct {
			IdleMS float64 `json:"idle_ms"`
			PerSec float64 `json:"fsyncs_per_s"`
			Each   struct {
				N int `json:"n"`
			} `json:"fsync"`
		}
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &rep) != nil {
			t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
		}
		// Three pauses of 20 ms before the writes: the command cannot end sooner, and the
		// rate counts the fsyncs alone, so it is far above the 50/s the pauses would allow.
		if took := time.Since(start); took < 60*time.Millisecond || rep.IdleMS != 20 || rep.Each.N != 3 || rep.PerSec <= 50 {
			t.Errorf("took %s, report %+v", took, rep)
		}
		text := runCLI(t, nil, nil, nil, "bench", "fsync", "--dir", dir, "-n", "1", "--idle", "1ms")
		if text.code != 0 || !strings.Contains(text.stdout, "each after 1ms idle") {
			t.Errorf("exit %d\nstdout: %s", text.code, text.stdout)
		}
	})
	for _, bad := range [][]string{
		{"chat", "-m", "tiny-a"},
		{"chat", "--direct", "http://127.0.0.1:1"},
		{"chat", "--direct", "http://127.0.0.1:1", "-m", "tiny-a", "--also", "127.0.0.1:2"},
		{"submit", "-n", "5", "--duration", "1s"},
		{"fsync"},
		{"fsync", "--dir", ".", "--idle", "-1ms"},
	} {
		t.Run(fmt.Sprint(bad), func(t *testing.T) {
			t.Parallel()
			if r := runCLI(t, vars, nil, nil, append([]string{"bench"}, bad...)...); r.code == 0 {
				t.Errorf("bench %v: exit 0, want an error; stdout %s", bad, r.stdout)
			}
		})
	}
}
