package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// queueBody is a GET /queue answer relative to fixedNow (2025-01-02T03:04:05Z).
const queueBody = `{"running":{"id":"01JGJ4Q2R0000000000000000B","kind":"generate","model":"qwen2.5:0.5b","state":"working","attempts":1,"created_at":"2025-01-02T02:58:05Z","started_at":"2025-01-02T03:03:05Z","finished_at":null,"error":"","result":null,"artifacts":[],"priority":"normal","program":""},` +
	`"loaded":["qwen2.5:0.5b"],"queued":[` +
	`{"job_id":"01JGJ4Q2R0000000000000000C","model":"qwen2.5:0.5b","kind":"chat","priority":"high","program":"","created_at":"2025-01-02T03:04:00Z","queue_position":1,"eta":"2025-01-02T03:04:05Z"},` +
	`{"job_id":"01JGJ4Q2R0000000000000000D","model":"llama3.2","kind":"chat","priority":"normal","program":"etl","created_at":"2025-01-02T03:00:05Z","queue_position":2,"eta":"2025-01-02T03:04:45Z"}],"total":5}` + "\n"

// queueForeman serves queueBody on GET /queue and records the query asked.
func queueForeman(t *testing.T) (url string, queries chan string) {
	return queueForemanOf(t, queueBody)
}

// queueForemanOf serves body on GET /queue and records the query asked.
func queueForemanOf(t *testing.T, body string) (url string, queries chan string) {
	t.Helper()
	queries = make(chan string, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/queue" {
			http.NotFound(w, r)
			return
		}
		queries <- r.URL.RawQuery
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, queries
}

// foreman queue prints the running job, the loaded models and the waiting jobs in order
// with their ETAs; --json is the body as sent; --limit asks the server for that many.
func TestQueueCommand(t *testing.T) {
	t.Parallel()
	url, queries := queueForeman(t)
	vars := map[string]string{"FOREMAN_URL": url}

	r := runCLI(t, vars, nil, nil, "queue")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	golden(t, "queue.golden", r.stdout)
	if want := "3 more waiting; see them with --limit 5\n"; r.stderr != want {
		t.Fatalf("stderr %q, want %q", r.stderr, want)
	}
	if q := <-queries; q != "" {
		t.Fatalf("query %q without --limit", q)
	}

	r = runCLI(t, vars, nil, nil, "queue", "--json")
	if r.code != 0 || r.stdout != queueBody {
		t.Fatalf("--json: exit %d, stdout %q", r.code, r.stdout)
	}
	<-queries

	if r = runCLI(t, vars, nil, nil, "queue", "--limit", "2"); r.code != 0 {
		t.Fatalf("--limit: exit %d, stderr %q", r.code, r.stderr)
	}
	if q := <-queries; q != "limit=2" {
		t.Fatalf("query %q, want limit=2", q)
	}
}

// A paused worker shows under the counts: why, for how long, and the error.
func TestQueueCommandPaused(t *testing.T) {
	t.Parallel()
	body := `{"running":null,"loaded":[],"queued":[` +
		`{"job_id":"01JGJ4Q2R0000000000000000C","model":"qwen2.5:0.5b","kind":"chat","priority":"normal","program":"","created_at":"2025-01-02T03:00:00Z","queue_position":1,"eta":"2025-01-02T03:04:05Z"}],"total":1,` +
		`"paused":{"reason":"target_unreachable","since":"2025-01-02T03:01:05Z","error":"Get \"http://mac:11434/api/ps\": connection refused"}}`
	url, _ := queueForemanOf(t, body)
	r := runCLI(t, map[string]string{"FOREMAN_URL": url}, nil, nil, "queue")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	golden(t, "queue_paused.golden", r.stdout)
}

// A job another foreman runs (several Macs on one NATS) is shown as such: it is neither
// the running job here nor waiting.
func TestQueueCommandRunningElsewhere(t *testing.T) {
	t.Parallel()
	body := `{"running":null,"loaded":[],"queued":[],"total":0,"paused":null,` +
		`"running_elsewhere":[{"job_id":"01JGJ4Q2R0000000000000000D","model":"qwen2.5:0.5b","kind":"chat","priority":"normal","program":"",` +
		`"created_at":"2025-01-02T03:00:00Z","state":"working","started_at":"2025-01-02T03:03:05Z"},` +
		`{"job_id":"01JGJ4Q2R0000000000000000E","model":"tiny-b","kind":"chat","priority":"normal","program":"",` +
		`"created_at":"2025-01-02T03:00:00Z","state":"working","started_at":"2025-01-02T03:03:05Z","runner":"studio"},` +
		`{"job_id":"01JGJ4Q2R0000000000000000F","model":"tiny-c","kind":"chat","priority":"normal","program":"",` +
		`"created_at":"2025-01-02T03:00:00Z","state":"loading","started_at":"2025-01-02T03:03:05Z","runner":"mini\u001b[2J","runner_gone":true}]}`
	url, _ := queueForemanOf(t, body)
	r := runCLI(t, map[string]string{"FOREMAN_URL": url}, nil, nil, "queue")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	for _, line := range []string{
		"On another Mac: 01JGJ4Q2R0000000000000000D qwen2.5:0.5b (working, 1m)\n",
		"On another Mac: 01JGJ4Q2R0000000000000000E tiny-b (working, 1m, on studio)\n",
		// A runner's name is the other foreman's to choose: no terminal control goes out.
		"On another Mac: 01JGJ4Q2R0000000000000000F tiny-c (loading, 1m, on mini\\x1b[2J (its foreman is gone: the job runs again once its ack wait ends))\n",
	} {
		if !strings.Contains(r.stdout, line) {
			t.Errorf("foreman queue printed no line %q:\n%s", line, r.stdout)
		}
	}
}

// A --limit below 1 is refused before anything is asked: it would list the server's
// default page without a word.
func TestLimitBelowOneIsRefused(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"FOREMAN_URL": "http://127.0.0.1:1"} // never reached
	for _, args := range [][]string{{"queue", "--limit", "0"}, {"queue", "--limit", "-1"}, {"jobs", "list", "--limit", "0"}} {
		r := runCLI(t, vars, nil, nil, args...)
		if r.code == 0 || !strings.Contains(r.stderr, "--limit: must be at least 1") {
			t.Errorf("%v: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}
