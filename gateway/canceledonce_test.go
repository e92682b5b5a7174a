package gateway

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A sync call whose client hangs up while its job runs logs "job canceled" once: the
// worker's line, written when the job has really ended so (a cancel of a running job is
// only a request, ADR-0020), with its attempt; the gateway's request is not logged again.
func TestClientGoneRunningJobCanceledLoggedOnce(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := newQueuedBundle(t, func(c *worker.Config) { c.Logger = log }, withGateway(func(c *Config) { c.Logger = log }))
	ctx := testCtx(t, 30*time.Second)
	states := watchStates(t, b.Broker.Conn)
	release := b.Fake.Hold("tiny-a")
	defer release()

	leaveCtx, leave := context.WithCancel(ctx)
	left := make(chan struct{})
	go func() {
		defer close(left)
		req, _ := http.NewRequestWithContext(leaveCtx, http.MethodPost, b.URL+"/api/chat", bytes.NewReader(chatBody("tiny-a", "bye", "")))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	if err := b.Fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	job := waitState(t, ctx, states, "job queued", func(j *broker.Job) bool { return j.State == broker.StateQueued })
	waitRecord(t, ctx, b.Broker.Store, job.ID, func(j *broker.Job) bool {
		return j.State == broker.StateLoading || j.State == broker.StateWorking
	})
	leave()
	<-left
	if j := waitRecord(t, ctx, b.Broker.Store, job.ID, func(j *broker.Job) bool { return j.State.Terminal() }); j.State != broker.StateCanceled {
		t.Fatalf("job ended %s", j.State)
	}
	// The worker runs one job at a time: once the next is answered it is done with the
	// canceled one, and the request log's line says the gateway's handler returned.
	release()
	if r := post(t, ctx, b.URL, "/api/chat", chatBody("tiny-a", "next", "false")); r.Status != 200 {
		t.Fatalf("next call: %d %s", r.Status, r.Body)
	}
	eventually(t, 10*time.Second, "both calls' request lines", func() bool {
		return strings.Count(logs.String(), `msg=http method=POST path=/api/chat`) >= 2
	})
	var canceled []string
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, `msg="job canceled"`) && strings.Contains(l, "job_id="+job.ID) {
			canceled = append(canceled, l)
		}
	}
	if len(canceled) != 1 || !strings.Contains(canceled[0], "attempt=1") || !strings.Contains(canceled[0], `reason="client disconnected"`) {
		t.Fatalf("job canceled lines %q, want one, the worker's, with its attempt and reason\n%s", canceled, logs.String())
	}
	// And it is the one line of the cancel at info: the rest are details for debugging.
	var info []string
	for l := range strings.Lines(logs.String()) {
		if !strings.Contains(l, "level=DEBUG") && strings.Contains(l, "job_id="+job.ID) && strings.Contains(l, "cancel") {
			info = append(info, l)
		}
	}
	if len(info) != 1 {
		t.Errorf("lines of the cancel above debug %q, want the one job canceled line", info)
	}
}

// DELETE /jobs/{id} of a running job logs "job canceled" once too: the worker's line, with
// its attempt and the reason; the handler logs only that it asked.
func TestDeleteRunningJobCanceledLoggedOnce(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := newQueuedBundle(t, func(c *worker.Config) { c.Logger = log }, withGateway(func(c *Config) { c.Logger = log }))
	ctx := testCtx(t, 30*time.Second)
	release := b.Fake.Hold("tiny-a")
	defer release()
	id := jobsSubmit(t, b.testBundle, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`)
	if err := b.Fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	waitRecord(t, ctx, b.Broker.Store, id, func(j *broker.Job) bool {
		return j.State == broker.StateLoading || j.State == broker.StateWorking
	})
	if resp, raw := b.request(t, http.MethodDelete, "/jobs/"+id, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("DELETE /jobs/%s: %d %s", id, resp.StatusCode, raw)
	}
	lines := func() (out []string) {
		for l := range strings.Lines(logs.String()) {
			if strings.Contains(l, `msg="job canceled"`) && strings.Contains(l, "job_id="+id) {
				out = append(out, l)
			}
		}
		return out
	}
	eventually(t, 10*time.Second, "the worker's job canceled line", func() bool {
		for _, l := range lines() {
			if strings.Contains(l, "attempt=1") {
				return true
			}
		}
		return false
	})
	if got := lines(); len(got) != 1 || !strings.Contains(got[0], `reason="canceled by DELETE /jobs"`) {
		t.Fatalf("job canceled lines %q, want one, the worker's, with its reason\n%s", got, logs.String())
	}
}
