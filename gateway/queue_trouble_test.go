package gateway

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A worker paused by a store fault that only a restart ends (the embedded server's stream
// that failed a write on a full disk, ADR-0041) says so in GET /queue: "restart_needed"
// true, as it will not resume by itself. Once the fault is gone (in this test; a real
// one needs the restart) the pause ends and the job runs.
func TestQueueSaysAStoreFaultNeedsARestart(t *testing.T) {
	t.Parallel()
	var fault atomic.Bool
	opt, start := withWorker(t)
	b := newTestBundle(t, opt, withBroker(brokertest.WithStore(func(c *broker.Config) {
		c.WriteFault = func() error {
			if fault.Load() {
				return errors.New("JetStream stream '$G > FOREMAN_QUEUE' write error: no space left on device")
			}
			return nil
		}
	})))
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`)
	fault.Store(true)
	if b.Broker.Store.CheckWriteFault() == nil {
		t.Fatal("the injected write fault does not stand")
	}
	start()
	var q queueBody
	eventually(t, 20*time.Second, "queue shows the pause", func() bool {
		q = getQueue(t, b, "")
		return q.Paused != nil
	})
	if q.Paused.Reason != broker.PauseStoreRefusesWrites || !q.Paused.RestartNeeded {
		t.Errorf("paused %+v: want store_refuses_writes with restart_needed", q.Paused)
	}
	// The error says the write failed for the store's fault, not for a stream of its own.
	if !strings.Contains(q.Paused.Error, "until foreman restarts (the store's fault: JetStream stream") {
		t.Errorf("pause error %q: want the store's fault named as such", q.Paused.Error)
	}
	if _, raw := b.request(t, http.MethodGet, "/queue", nil); !strings.Contains(string(raw), `"restart_needed":true`) {
		t.Errorf("body %s: want restart_needed in paused", raw)
	}

	fault.Store(false)
	waitJobState(t, b, id, broker.StateDone)
	eventually(t, 20*time.Second, "the pause to end", func() bool { return getQueue(t, b, "").Paused == nil })
	if _, raw := b.request(t, http.MethodGet, "/queue", nil); strings.Contains(string(raw), "restart_needed") {
		t.Errorf("body %s: restart_needed with no pause", raw)
	}
}

// While the own Ollama leaves its polls unanswered with a job running (a hung Mac), the
// worker is not paused (it waits on the job's call), yet GET /queue shows the target
// unreachable, since when, and why: the page warns from that. Once a poll is answered
// both go.
func TestQueueShowsTheOwnTargetDownWhileAJobRuns(t *testing.T) {
	t.Parallel()
	opt, start := withWorker(t)
	b := newTestBundle(t, opt)
	release := b.Fake.Hold("tiny-a")
	defer release()
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`)
	start()
	eventually(t, 20*time.Second, "the job to run", func() bool { return getQueue(t, b, "").Running != nil })
	// The view shows the job running from before its call goes out: the call must have
	// reached the fake (and wait on the hold) before the target goes down. A call that
	// came after would be dropped, and the worker, pausing for the target, would probe
	// it while down; the poll below, once the target is back, could share that probe's
	// poll (Refresh joins one in flight) and fail with its EOF.
	if err := b.Fake.WaitStarted(testCtx(t, 20*time.Second), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	b.Fake.SetDown(true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before := time.Now()
	if err := b.Inv.Refresh(ctx); err == nil {
		t.Fatal("a poll of a target that is down succeeded")
	}
	q := getQueue(t, b, "")
	if q.Running == nil || q.Running.ID != id || q.Paused != nil {
		t.Fatalf("running %v, paused %+v: want job %s running, no pause", q.Running, q.Paused, id)
	}
	own := q.Targets[0]
	if !own.Own || own.Reachable || own.DownSince == nil || own.DownSince.Before(before.Add(-time.Second)) || own.Error == "" {
		t.Errorf("own target %+v: want unreachable, down since the poll, with its error", own)
	}

	b.Fake.SetDown(false)
	if err := b.Inv.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if own := getQueue(t, b, "").Targets[0]; !own.Reachable || own.DownSince != nil || own.Error != "" {
		t.Errorf("own target %+v once a poll is answered: want reachable, no down_since or error", own)
	}
}

// A job backing off after a failed attempt shows in GET /queue as retrying, with the
// attempt's number and error, unlike one waiting its first turn.
func TestQueueShowsARetryingJob(t *testing.T) {
	t.Parallel()
	var w *worker.Worker
	b := newTestBundle(t, withGateway(func(c *Config) {
		var err error
		w, err = worker.New(worker.Config{Store: c.Store, Target: c.Target, Inventory: c.Inventory, RetryDelay: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		c.Queue = w
	}))
	b.Fake.FailNextOn("/api/chat", 1, ollamatest.DropConnection)
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`)
	waiting := jobsSubmit(t, b, `{"model":"tiny-b","messages":[{"role":"user","content":"hi"}],"priority":"low"}`)
	release := b.Fake.Hold("tiny-b") // the other job, should it run, stays in sight
	defer release()
	runUntilCleanup(t, "worker", w.Run)
	waitJobState(t, b, id, broker.StateRetrying)
	// The tiny-b job runs (held) while tiny-a backs off; a second one waits behind it,
	// its first turn to come.
	if err := b.Fake.WaitStarted(testCtx(t, 10*time.Second), "tiny-b", 1); err != nil {
		t.Fatal(err)
	}
	next := jobsSubmit(t, b, `{"model":"tiny-b","messages":[{"role":"user","content":"next"}],"priority":"low"}`)
	var q queueBody
	eventually(t, 10*time.Second, "queue shows the tiny-b job running, the retry and the job behind", func() bool {
		q = getQueue(t, b, "")
		return q.Running != nil && q.Running.ID == waiting && len(q.Queued) == 2 && q.Queued[0].State != ""
	})
	r := q.Queued[0]
	if r.JobID != id || r.State != broker.StateRetrying || r.Attempts != 1 || r.Error == "" {
		t.Errorf("queued %+v: want job %s retrying after attempt 1 with its error", r, id)
	}
	if j := q.Queued[1]; j.JobID != next || j.State != "" || j.Attempts != 0 || j.Error != "" {
		t.Errorf("queued %+v: want job %s waiting its first turn, not shown as retrying (%s runs)", j, next, waiting)
	}
}

// A job whose attempt the worker gave up for its Mac's stall and left to another Mac
// that has its model (ADR-0066) says so in GET /queue and GET /jobs/{id}
// ("left_elsewhere"), with the ETA of running here once the hold runs out, not next.
func TestQueueShowsAJobLeftToAnotherMac(t *testing.T) {
	t.Parallel()
	var w *worker.Worker
	const maxWait = time.Hour
	b := newTestBundle(t, withGateway(func(c *Config) {
		var err error
		w, err = worker.New(worker.Config{Store: c.Store, Target: c.Target, Inventory: c.Inventory,
			StreamIdleTimeout: 200 * time.Millisecond, MaxWait: maxWait, RetryDelay: 5 * time.Millisecond, IdlePoll: 20 * time.Millisecond,
			Elsewhere: func(_ context.Context, model string) bool { return model == "tiny-a:latest" }})
		if err != nil {
			t.Fatal(err)
		}
		c.Queue = w
	}))
	b.Fake.FailNextOn("/api/chat", 1, ollamatest.StallMidStream)
	gaveUp := time.Now()
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`)
	runUntilCleanup(t, "worker", w.Run)
	waitJobState(t, b, id, broker.StateRetrying)
	var q queueBody
	eventually(t, 10*time.Second, "queue shows the job retrying", func() bool {
		q = getQueue(t, b, "")
		return len(q.Queued) == 1 && q.Queued[0].State == broker.StateRetrying
	})
	if r := q.Queued[0]; r.JobID != id || !r.LeftElsewhere || r.ETA.Before(gaveUp.Add(maxWait)) {
		t.Errorf("queued %+v: want job %s left to another Mac, expected here once the hold ends", r, id)
	}
	if _, raw := b.request(t, http.MethodGet, "/queue", nil); !strings.Contains(string(raw), `"left_elsewhere":true`) {
		t.Errorf("GET /queue %s: want left_elsewhere", raw)
	}
	if _, raw := b.request(t, http.MethodGet, "/jobs/"+id, nil); !strings.Contains(string(raw), `"left_elsewhere":true`) || !strings.Contains(string(raw), `"queue_position":1`) {
		t.Errorf("GET /jobs/%s %s: want left_elsewhere with its position", id, raw)
	}
}

// Several Macs on one NATS: a waiting job whose model this foreman's Mac lacks is left
// to the others (Config.Runs). GET /queue lists it under waiting_elsewhere, with no
// position or ETA, and this worker's plan counts none of its time: a high-priority job of
// that model does not push the own jobs back. GET /jobs/{id} says waiting_elsewhere.
func TestQueueShowsJobsWaitingForAnotherMac(t *testing.T) {
	t.Parallel()
	var w *worker.Worker
	b := newTestBundle(t, withGateway(func(c *Config) {
		var err error
		w, err = worker.New(worker.Config{Store: c.Store, Target: c.Target, Inventory: c.Inventory, MaxWait: time.Hour,
			Runs: func(_ context.Context, model string) bool { return model != "tiny-b:latest" }})
		if err != nil {
			t.Fatal(err)
		}
		c.Queue = w
	}))
	release := b.Fake.Hold("tiny-a")
	defer release()
	running := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"0"}]}`)
	runUntilCleanup(t, "worker", w.Run)
	if err := b.Fake.WaitStarted(testCtx(t, 10*time.Second), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	urgent := jobsSubmit(t, b, `{"model":"tiny-b","messages":[{"role":"user","content":"1"}],"priority":"high"}`)
	own := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"2"}]}`)
	later := jobsSubmit(t, b, `{"model":"tiny-b","messages":[{"role":"user","content":"3"}]}`)
	var q queueBody
	eventually(t, 10*time.Second, "queue shows the three waiting jobs", func() bool {
		q = getQueue(t, b, "")
		return q.Running != nil && q.Running.ID == running && len(q.Queued)+len(q.WaitingElsewhere) == 3
	})
	if len(q.Queued) != 1 || q.Queued[0].JobID != own || q.Queued[0].QueuePosition != 1 || q.Total != 1 {
		t.Errorf("queued %+v total %d: want only the tiny-a job %s, at position 1", q.Queued, q.Total, own)
	}
	if len(q.WaitingElsewhere) != 2 || q.WaitingElsewhere[0].JobID != urgent || q.WaitingElsewhere[1].JobID != later {
		t.Fatalf("waiting elsewhere %+v: want the tiny-b jobs %s and %s, oldest first", q.WaitingElsewhere, urgent, later)
	}
	for _, j := range q.WaitingElsewhere {
		if j.QueuePosition != 0 || !j.ETA.IsZero() {
			t.Errorf("job waiting elsewhere %+v: want no position or ETA", j)
		}
	}
	if q.Depth["tiny-b:latest"] != 2 || q.Depth["tiny-a:latest"] != 1 {
		t.Errorf("depth %v: want the whole queue, tiny-b 2 and tiny-a 1", q.Depth)
	}
	_, raw := b.request(t, http.MethodGet, "/queue", nil)
	if i := strings.Index(string(raw), `"waiting_elsewhere"`); i < 0 || strings.Contains(string(raw[i:]), `"queue_position"`) || strings.Contains(string(raw[i:]), `"eta"`) {
		t.Errorf("GET /queue %s: want waiting_elsewhere without positions or ETAs", raw)
	}
	if _, raw := b.request(t, http.MethodGet, "/jobs/"+urgent, nil); !strings.Contains(string(raw), `"waiting_elsewhere":true`) || strings.Contains(string(raw), `"queue_position"`) {
		t.Errorf("GET /jobs/%s %s: want waiting_elsewhere and no position", urgent, raw)
	}
	if _, raw := b.request(t, http.MethodGet, "/jobs/"+own, nil); !strings.Contains(string(raw), `"queue_position":1`) || strings.Contains(string(raw), `"waiting_elsewhere"`) {
		t.Errorf("GET /jobs/%s %s: want position 1", own, raw)
	}
}

// GET /queue?limit= bounds the jobs waiting for another Mac as it bounds the queued
// ones (the client reads the answer within a bound made of the limit), the oldest first,
// and Depth counts them all; with none, the list is empty, not null.
func TestQueueLimitsTheJobsWaitingForAnotherMac(t *testing.T) {
	t.Parallel()
	var w *worker.Worker
	b := newTestBundle(t, withGateway(func(c *Config) {
		var err error
		w, err = worker.New(worker.Config{Store: c.Store, Target: c.Target, Inventory: c.Inventory,
			Runs: func(_ context.Context, model string) bool { return model != "tiny-b:latest" }})
		if err != nil {
			t.Fatal(err)
		}
		c.Queue = w
	}))
	runUntilCleanup(t, "worker", w.Run)
	if _, raw := b.request(t, http.MethodGet, "/queue", nil); !strings.Contains(string(raw), `"waiting_elsewhere":[]`) {
		t.Errorf("GET /queue %s: want an empty waiting_elsewhere", raw)
	}
	first := jobsSubmit(t, b, `{"model":"tiny-b","messages":[{"role":"user","content":"1"}]}`)
	jobsSubmit(t, b, `{"model":"tiny-b","messages":[{"role":"user","content":"2"}]}`)
	var q queueBody
	eventually(t, 10*time.Second, "the queue's depth of two tiny-b jobs", func() bool {
		q = getQueue(t, b, "?limit=1")
		return q.Depth["tiny-b:latest"] == 2
	})
	if len(q.WaitingElsewhere) != 1 || q.WaitingElsewhere[0].JobID != first || q.Total != 0 || len(q.Queued) != 0 {
		t.Errorf("?limit=1: waiting elsewhere %+v, queued %+v, total %d; want only the older tiny-b job %s", q.WaitingElsewhere, q.Queued, q.Total, first)
	}
}
