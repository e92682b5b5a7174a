package app_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// realOllamaLoads counts the model loads of the real Ollama at rawURL so far ("starting
// runner" lines in its log: FOREMAN_TEST_OLLAMA_LOG, else the kit's default place).
func realOllamaLoads(t *testing.T, rawURL string) int {
	t.Helper()
	log := os.Getenv("FOREMAN_TEST_OLLAMA_LOG")
	if log == "" {
		home := os.Getenv("REALOLLAMA_HOME")
		if home == "" {
			h, _ := os.UserHomeDir()
			home = filepath.Join(h, ".cache", "foreman-realollama")
		}
		u, _ := url.Parse(rawURL)
		log = filepath.Join(home, "logs", "ollama-"+u.Port()+".log")
	}
	data, err := os.ReadFile(log)
	if err != nil {
		t.Skipf("cannot count the real Ollama's model loads: %v", err)
	}
	return bytes.Count(data, []byte("starting runner"))
}

// metricSum is the sum of counter name over its labels.
func metricSum(t *testing.T, a *app.App, name string) int {
	t.Helper()
	_, b := call(t, a, http.MethodGet, "/metrics", "")
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), name+"{"); ok {
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", sc.Text(), err)
			}
			n += int(v)
		}
	}
	return n
}

// Against a real Ollama keeping one model (OLLAMA_MAX_LOADED_MODELS=1), foreman's count of
// model loads (foreman_model_loads_total, from the jobs' loading state) follows Ollama's
// own, step by step, through keep_alive 0 answers, Ollama's unload request, a client's
// keep_alive (passed through and honoured) and an embedding sent straight to Ollama that
// swaps the chat model out; GET /queue's loaded follows /api/ps.
func TestRealOllamaLoadsCountedAsOllamaLoads(t *testing.T) {
	target := ollamatest.RealOllama(t)
	// Polls far apart, as in production (30s): what foreman knows between them comes from
	// its own jobs.
	cfg := app.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), OllamaURL: target, TargetName: "mac", PollInterval: time.Hour}
	a, err := app.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopForeman(t, a) })

	chat := func(model, extra string) string {
		return `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_predict":4}` + extra + `}`
	}
	type psModel struct {
		Name      string    `json:"name"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	ps := func() []psModel {
		_, b := call(t, a, http.MethodGet, "/api/ps", "")
		var body struct{ Models []psModel }
		if err := json.Unmarshal(b, &body); err != nil {
			t.Fatalf("/api/ps: %v: %s", err, b)
		}
		return body.Models
	}
	queueLoaded := func() []string {
		_, b := call(t, a, http.MethodGet, "/queue", "")
		var q struct{ Loaded []string }
		if err := json.Unmarshal(b, &q); err != nil {
			t.Fatalf("/queue: %v: %s", err, b)
		}
		return q.Loaded
	}
	counted, ended := metricSum(t, a, "foreman_model_loads_total"), metricSum(t, a, "foreman_jobs_total")
	steps := []struct {
		what, path, body string
		loaded           []string // GET /queue's loaded after it; nil: not checked
		check            func()
	}{
		{what: "a chat", path: "/api/chat", body: chat("tiny-a", ""), loaded: []string{"tiny-a:latest"}},
		{what: "a chat with keep_alive 0", path: "/api/chat", body: chat("tiny-a", `,"keep_alive":0`), loaded: []string{}},
		{what: "a chat after it", path: "/api/chat", body: chat("tiny-a", ""), loaded: []string{"tiny-a:latest"}},
		{what: "an embedding", path: "/api/embed", body: `{"model":"tiny-embed","input":"hi"}`},
		{what: "a chat after the embedding", path: "/api/chat", body: chat("tiny-a", ""), loaded: []string{"tiny-a:latest"}},
		{what: `a chat with keep_alive "10m"`, path: "/api/chat", body: chat("tiny-a", `,"keep_alive":"10m"`), check: func() {
			if m := ps(); len(m) != 1 || time.Until(m[0].ExpiresAt) < 9*time.Minute || time.Until(m[0].ExpiresAt) > 11*time.Minute {
				t.Errorf("/api/ps after a chat with keep_alive \"10m\": %+v, want tiny-a expiring in 10 minutes", m)
			}
		}},
		{what: "a generate with keep_alive -1", path: "/api/generate", body: `{"model":"tiny-a","prompt":"hi","stream":false,"keep_alive":-1,"options":{"num_predict":4}}`, check: func() {
			if m := ps(); len(m) != 1 || time.Until(m[0].ExpiresAt) < 24*time.Hour*365 {
				t.Errorf("/api/ps after a generate with keep_alive -1: %+v, want tiny-a kept for good", m)
			}
		}},
		{what: "an unload request", path: "/api/chat", body: `{"model":"tiny-a","keep_alive":0}`, loaded: []string{}},
		{what: "an unload request with nothing loaded", path: "/api/generate", body: `{"model":"tiny-b","keep_alive":0}`, loaded: []string{}},
	}
	for _, s := range steps {
		before := realOllamaLoads(t, target)
		code, b := call(t, a, http.MethodPost, s.path, s.body)
		if code != http.StatusOK {
			t.Fatalf("%s: %d %s", s.what, code, b)
		}
		if s.path == "/api/embed" {
			continue // straight to Ollama: no job, its load not foreman's
		}
		// The metrics are counted from the job's events: its end is counted after its load.
		ended++
		eventually(t, 10*time.Second, "the job of "+s.what+" counted", func() bool { return metricSum(t, a, "foreman_jobs_total") >= ended })
		loads, got := realOllamaLoads(t, target)-before, metricSum(t, a, "foreman_model_loads_total")-counted
		counted += got
		if got != loads {
			t.Errorf("%s: foreman counted %d model loads, Ollama did %d", s.what, got, loads)
		}
		if s.loaded != nil {
			var last []string
			ok := pollFor(10*time.Second, func() bool { // a view is reused a quarter second at least
				last = queueLoaded()
				return slices.Equal(last, s.loaded)
			})
			if !ok {
				t.Errorf("after %s: GET /queue's loaded is %v, want %v", s.what, last, s.loaded)
			}
		}
		if s.check != nil {
			s.check()
		}
	}
}

// pollFor checks cond every 10ms until it holds (true) or within passes (false).
func pollFor(within time.Duration, cond func() bool) bool {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(within)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			return false
		}
	}
	return true
}
