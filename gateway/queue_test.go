package gateway

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// withWorker builds a worker on the bundle's store as the gateway's queue view; the
// returned start runs it until the test ends.
func withWorker(t *testing.T, adjust ...func(*Config)) (bundleOption, func()) {
	var w *worker.Worker
	opt := withGateway(func(c *Config) {
		var err error
		w, err = worker.New(worker.Config{Store: c.Store, Target: c.Target, Inventory: c.Inventory, RetryDelay: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		c.Queue = w
		for _, f := range adjust {
			f(c)
		}
	})
	return opt, func() { runUntilCleanup(t, "worker", w.Run) }
}

// getQueue answers GET /queue with query q.
func getQueue(t *testing.T, b *testBundle, q string) queueBody {
	t.Helper()
	resp, out := b.request(t, http.MethodGet, "/queue"+q, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /queue%s: %d %s", q, resp.StatusCode, out)
	}
	var body queueBody
	if err := json.Unmarshal(out, &body); err != nil {
		t.Fatalf("GET /queue%s: %v in %s", q, err, out)
	}
	return body
}

// GET /queue shows the running job, the loaded model and the waiting jobs in the order
// the worker runs them (the loaded model's first); GET /jobs/{id} of a waiting job
// carries its position and ETA, and of a running or finished one neither.
func TestQueueShowsOrderPositionAndETA(t *testing.T) {
	t.Parallel()
	opt, start := withWorker(t)
	b := newTestBundle(t, opt)
	release := b.Fake.Hold("tiny-a")
	running := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"first"}]}`)
	start()
	if err := b.Fake.WaitStarted(testCtx(t, 20*time.Second), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	bJob := jobsSubmit(t, b, `{"model":"tiny-b","messages":[{"role":"user","content":"b"}]}`)
	a1 := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"a1"}]}`)
	a2 := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"a2"}]}`, "X-Foreman-Priority", "low")

	// Wait for the worker's running job to be recorded (it must be in loading or working).
	var q queueBody
	eventually(t, 20*time.Second, "queue shows the running job and 3 waiting", func() bool {
		q = getQueue(t, b, "")
		return q.Running != nil && q.Total == 3
	})
	if q.Running.ID != running {
		t.Fatalf("running %s, want %s", q.Running.ID, running)
	}
	if strings.Join(q.Loaded, ",") != "tiny-a:latest" {
		t.Fatalf("loaded %v", q.Loaded)
	}
	var order []string
	for i, j := range q.Queued {
		order = append(order, j.JobID)
		if j.QueuePosition != i+1 || j.ETA.IsZero() || j.CreatedAt.IsZero() || j.Kind != broker.KindChat {
			t.Fatalf("queued[%d] = %+v", i, j)
		}
	}
	if want := []string{a1, bJob, a2}; strings.Join(order, ",") != strings.Join(want, ",") {
		t.Fatalf("order %v, want %v (normal tiny-a, normal tiny-b, low tiny-a)", order, want)
	}
	if q.Queued[2].Priority != broker.PriorityLow || q.Queued[1].Model != "tiny-b" {
		t.Fatalf("queued %+v", q.Queued)
	}
	if lim := getQueue(t, b, "?limit=1"); len(lim.Queued) != 1 || lim.Total != 3 || lim.Queued[0].JobID != a1 {
		t.Fatalf("?limit=1: %+v", lim)
	}
	if lim := getQueue(t, b, "?limit=100000"); len(lim.Queued) != 3 {
		t.Fatalf("?limit=100000: %+v", lim)
	}
	for _, bad := range []string{"?limit=0", "?limit=x", "?limit=-3", "?limit=100001"} {
		resp, out := b.request(t, http.MethodGet, "/queue"+bad, nil)
		wantError(t, resp, out, http.StatusBadRequest, "limit")
	}

	v := jobsGet(t, b, bJob)
	if v.QueuePosition == nil || *v.QueuePosition != 2 || v.ETA == nil {
		t.Fatalf("queued job view: position %v eta %v", v.QueuePosition, v.ETA)
	}
	if rv := jobsGet(t, b, running); rv.QueuePosition != nil || rv.ETA != nil {
		t.Fatalf("running job shows position %v eta %v", rv.QueuePosition, rv.ETA)
	}
	_, raw := b.request(t, http.MethodGet, "/jobs/"+running, nil)
	if strings.Contains(string(raw), "queue_position") || strings.Contains(string(raw), `"eta"`) {
		t.Fatalf("running job body %s", raw)
	}

	release()
	for _, id := range []string{running, a1, bJob, a2} {
		waitJobState(t, b, id, broker.StateDone)
	}
	_, raw = b.request(t, http.MethodGet, "/jobs/"+a2, nil)
	if strings.Contains(string(raw), "queue_position") || strings.Contains(string(raw), `"eta"`) {
		t.Fatalf("finished job body %s", raw)
	}
}

// A just-submitted job has its position at once: the view is computed again for it.
func TestJobPositionRightAfterSubmit(t *testing.T) {
	t.Parallel()
	opt, start := withWorker(t)
	b := newTestBundle(t, opt)
	release := b.Fake.Hold("tiny-a")
	defer release()
	jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"first"}]}`)
	start()
	if err := b.Fake.WaitStarted(testCtx(t, 20*time.Second), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	getQueue(t, b, "") // a view cached before the next submit
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"next"}]}`)
	if v := jobsGet(t, b, id); v.QueuePosition == nil || *v.QueuePosition != 1 || v.ETA == nil {
		t.Fatalf("position %v eta %v", v.QueuePosition, v.ETA)
	}
}

// GET /queue says foreman's time of the answer (now), on the NATS server's clock that
// its ETAs are on: a client on a host whose clock is off takes its spans against it.
func TestQueueSaysForemansTime(t *testing.T) {
	t.Parallel()
	opt, _ := withWorker(t)
	b := newTestBundle(t, opt)
	before := b.Broker.Store.ServerNow()
	q := getQueue(t, b, "")
	after := b.Broker.Store.ServerNow()
	if q.Now.Before(before.Truncate(time.Microsecond)) || q.Now.After(after) {
		t.Fatalf("now %v, want the server's time between %v and %v", q.Now, before, after)
	}
}

// GET /jobs says foreman's time of the answer (now) as GET /queue does: `foreman jobs`
// on a host whose clock is off takes the jobs' ages against it.
func TestListJobsSaysForemansTime(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	jobsSubmit(t, b, `{"model":"tiny-a"}`)
	before := b.Broker.Store.Now()
	resp, out := b.request(t, http.MethodGet, "/jobs", nil)
	after := b.Broker.Store.Now()
	var page struct {
		Jobs []jobView `json:"jobs"`
		Now  time.Time `json:"now"`
	}
	if err := json.Unmarshal(out, &page); resp.StatusCode != http.StatusOK || err != nil || len(page.Jobs) != 1 {
		t.Fatalf("GET /jobs: %d %s", resp.StatusCode, out)
	}
	if page.Now.Before(before) || page.Now.After(after) {
		t.Fatalf("now %v, want foreman's time between %v and %v", page.Now, before, after)
	}
}

// GET /jobs's now is on the clock of the records' stamps (foreman's, which stamps
// created_at), not the NATS server's: on a foreman whose clock is an hour behind its
// server's, a job just submitted was listed an hour old by `foreman jobs`.
func TestListJobsNowIsOnTheRecordsClock(t *testing.T) {
	t.Parallel()
	const off = time.Hour
	b := newTestBundle(t, withBroker(brokertest.WithStore(func(c *broker.Config) {
		c.Now = func() time.Time { return time.Now().Add(-off) }
	})))
	jobsSubmit(t, b, `{"model":"tiny-a"}`)
	resp, out := b.request(t, http.MethodGet, "/jobs", nil)
	var page struct {
		Jobs []jobView `json:"jobs"`
		Now  time.Time `json:"now"`
	}
	if err := json.Unmarshal(out, &page); resp.StatusCode != http.StatusOK || err != nil || len(page.Jobs) != 1 {
		t.Fatalf("GET /jobs: %d %s", resp.StatusCode, out)
	}
	if age := page.Now.Sub(page.Jobs[0].CreatedAt); age < 0 || age > off/2 {
		t.Fatalf("a job just submitted is %v old by the listing's now %v (created_at %v), want about 0",
			age, page.Now, page.Jobs[0].CreatedAt)
	}
}

// Without a worker in the process GET /queue says so with a JSON error.
func TestQueueWithoutWorker(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	resp, out := b.request(t, http.MethodGet, "/queue", nil)
	wantError(t, resp, out, http.StatusServiceUnavailable, "no worker")
}

// While the worker waits for an unreachable target, GET /queue says so ("paused", null
// while it runs) and shows the job whose call failed waiting, not running. The pause's
// error names the target without the password of its URL.
func TestQueueShowsTheWorkerPaused(t *testing.T) {
	t.Parallel()
	const password = "s3cret"
	opt, start := withWorker(t)
	b := newTestBundle(t, opt, withTargetUserinfo("user:"+password))
	b.Fake.SetDown(true)
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"patience"}]}`)
	start()
	var q queueBody
	eventually(t, 20*time.Second, "queue shows the pause", func() bool {
		q = getQueue(t, b, "")
		return q.Paused != nil
	})
	if q.Paused.Reason != broker.PauseTargetUnreachable || q.Paused.Error == "" || q.Paused.Since.IsZero() {
		t.Errorf("paused %+v", q.Paused)
	}
	if q.Running != nil || q.Total != 1 || q.Queued[0].JobID != id {
		t.Errorf("running %v, queued %+v: want the job waiting", q.Running, q.Queued)
	}
	_, raw := b.request(t, http.MethodGet, "/queue", nil)
	if !strings.Contains(string(raw), `"paused":{"reason":"target_unreachable","since":"`) ||
		strings.Contains(string(raw), password) || !strings.Contains(q.Paused.Error, "xxxxx") {
		t.Errorf("body %s: want the pause, its error with the target's URL redacted", raw)
	}

	pausedMetrics := func() string {
		_, m := b.request(t, http.MethodGet, "/metrics", nil)
		var lines []string
		for _, l := range strings.Split(string(m), "\n") {
			if strings.HasPrefix(l, "foreman_worker_paused{") {
				lines = append(lines, l)
			}
		}
		return strings.Join(lines, "\n")
	}
	if got, want := pausedMetrics(), `foreman_worker_paused{reason="store_refuses_writes"} 0`+"\n"+
		`foreman_worker_paused{reason="target_busy"} 0`+"\n"+
		`foreman_worker_paused{reason="target_unreachable"} 1`; got != want {
		t.Errorf("metrics while paused:\n%s\nwant\n%s", got, want)
	}

	b.Fake.SetDown(false)
	waitJobState(t, b, id, broker.StateDone)
	eventually(t, 20*time.Second, "the pause to end", func() bool {
		_, raw = b.request(t, http.MethodGet, "/queue", nil)
		return strings.Contains(string(raw), `"paused":null`)
	})
	if got := pausedMetrics(); strings.Contains(got, " 1") || strings.Count(got, " 0") != 3 {
		t.Errorf("metrics after the pause:\n%s", got)
	}
}

// An idle worker whose target stopped answering its polls takes no job (it probes
// first), so GET /queue and the metrics show it paused, since the first unanswered poll,
// though it met the outage with no job of its own; and no longer once a poll is answered.
func TestQueueShowsAnIdleWorkerPausedForADownTarget(t *testing.T) {
	t.Parallel()
	opt, start := withWorker(t)
	b := newTestBundle(t, opt)
	start()
	if q := getQueue(t, b, ""); q.Paused != nil {
		t.Fatalf("paused %+v with the target up", q.Paused)
	}
	_, m := b.request(t, http.MethodGet, "/metrics", nil)
	if !strings.Contains(string(m), `foreman_worker_paused{reason="target_unreachable"} 0`) {
		t.Errorf("metrics show a pause with the target up")
	}
	b.Fake.SetDown(true)
	// A poll begun before may be in flight, and answered: a check joins it.
	eventually(t, 10*time.Second, "a poll of the down target unanswered", func() bool {
		return b.Inv.Refresh(testCtx(t, 10*time.Second)) != nil
	})
	down := b.Inv.Snapshot().DownSince
	var q queueBody
	eventually(t, 10*time.Second, "the pause shown (past the view's short cache)", func() bool {
		q = getQueue(t, b, "")
		return q.Paused != nil
	})
	if q.Paused.Reason != broker.PauseTargetUnreachable || !q.Paused.Since.Equal(down) || q.Paused.Error == "" {
		t.Fatalf("paused %+v; want target_unreachable since the first unanswered poll (%v)", q.Paused, down)
	}
	_, m = b.request(t, http.MethodGet, "/metrics", nil)
	if !strings.Contains(string(m), `foreman_worker_paused{reason="target_unreachable"} 1`) {
		t.Errorf("metrics do not show the pause")
	}
	b.Fake.SetDown(false)
	// A poll begun while the fake was down may be in flight: a check joins it.
	eventually(t, 10*time.Second, "a poll answered", func() bool { return b.Inv.Refresh(testCtx(t, 10*time.Second)) == nil })
	eventually(t, 10*time.Second, "the pause gone once the target answers", func() bool { return getQueue(t, b, "").Paused == nil })
}

// While NATS does not answer, GET /queue and GET /jobs answer as GET /jobs/{id} does: 503
// with Retry-After and the store's message, within the retry window; never a 504.
func TestQueueAndListWhileStoreUnavailable(t *testing.T) {
	t.Parallel()
	opt, _ := withWorker(t) // its view, not its runs
	// Short, as each request below waits it out; long enough for the submit before the
	// outage on a loaded machine.
	b := newTestBundle(t, opt, withBroker(brokertest.WithStore(func(c *broker.Config) { c.RetryWindow = 2 * time.Second })))
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[]}`)
	b.Broker.Server.Shutdown() // the store's connection stays, reconnecting
	for _, path := range []string{"/jobs/" + id, "/queue", "/jobs", "/jobs?state=done", "/jobs?cursor=" + id} {
		resp, out := b.request(t, http.MethodGet, path, nil)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
			errorBody(t, out) != "job store temporarily unavailable, retry shortly" {
			t.Errorf("GET %s: %d %s, Retry-After %q; want 503 with Retry-After", path, resp.StatusCode, out, resp.Header.Get("Retry-After"))
		}
	}
}

// GET /queue's depth counts every waiting job per model, those past ?limit= too, so a
// status page can chart a queue far longer than the list it shows.
func TestQueueDepthCoversTheWholeQueue(t *testing.T) {
	t.Parallel()
	opt, _ := withWorker(t) // its view, not its runs: every job waits
	b := newTestBundle(t, opt)
	for _, m := range []string{"tiny-a", "tiny-b", "tiny-a", "tiny-a", "tiny-b", "tiny-a"} {
		jobsSubmit(t, b, `{"model":"`+m+`","messages":[]}`)
	}
	q := getQueue(t, b, "?limit=2")
	if len(q.Queued) != 2 || q.Total != 6 {
		t.Fatalf("%d shown of %d, want 2 of 6", len(q.Queued), q.Total)
	}
	if len(q.Depth) != 2 || q.Depth["tiny-a:latest"] != 4 || q.Depth["tiny-b:latest"] != 2 {
		t.Errorf("depth %v, want tiny-a:latest 4 and tiny-b:latest 2", q.Depth)
	}
	_, raw := b.request(t, http.MethodGet, "/queue?limit=1", nil)
	if !strings.Contains(string(raw), `"depth":{"tiny-a:latest":4,"tiny-b:latest":2}`) {
		t.Errorf("body %s: want the depth map", raw)
	}
}
