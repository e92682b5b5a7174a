package client_test

import (
	"encoding/json"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// Queue shows the running job and the waiting ones in order, and Job carries a waiting
// job's position and ETA, through a whole foreman as serve wires it.
func TestQueueAndJobPosition(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	c := newClient(t, f.URL)
	ctx := testCtx(t)

	release := f.Fake.Hold("tiny-a")
	defer release()
	held, err := c.SubmitAsync(ctx, chatJob("tiny-a", "held"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	later, err := c.SubmitAsync(ctx, client.SubmitRequest{Generate: &client.GenerateRequest{Model: "tiny-b", Prompt: "later"}, Program: "etl"})
	if err != nil {
		t.Fatal(err)
	}
	next, err := c.SubmitAsync(ctx, chatJob("tiny-a", "next"))
	if err != nil {
		t.Fatal(err)
	}
	var q *client.Queue
	// The worker records its start a moment after taking the job.
	eventually(t, 20*time.Second, "queue shows the running job and 2 in all", func() bool {
		q, err = c.Queue(ctx, 1)
		return err == nil && q.Running != nil && q.Total == 2
	})
	depth := 0
	for _, n := range q.Depth {
		depth += n
	}
	if depth != q.Total {
		t.Errorf("Depth %v does not add up to Total %d", q.Depth, q.Total)
	}
	if q.Running.ID != held || len(q.Queued) != 1 || q.Queued[0].JobID != next || q.Queued[0].QueuePosition != 1 || q.Queued[0].ETA.IsZero() {
		t.Fatalf("Queue(1) = running %+v, queued %+v", q.Running, q.Queued)
	}
	var raw map[string]any
	if err := json.Unmarshal(q.Raw, &raw); err != nil || raw["total"] != float64(2) {
		t.Fatalf("Raw %s: %v", q.Raw, err)
	}
	j, err := c.Job(ctx, later)
	if err != nil || j.QueuePosition != 2 || j.ETA == nil || j.ETA.Before(q.Queued[0].ETA) {
		t.Fatalf("Job(later) = %+v, %v", j, err)
	}
	if j, err := c.Job(ctx, held); err != nil || j.QueuePosition != 0 || j.ETA != nil {
		t.Fatalf("Job(running) = %+v, %v", j, err)
	}
}
