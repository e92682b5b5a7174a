package client_test

import (
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// SubmitRequest.Priority and .Program reach foreman over HTTP and NATS, and Job shows them.
func TestSubmitPriorityAndProgram(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	for name, opts := range map[string][]client.Option{
		"http": {client.WithPollingOnly(), client.WithPollInterval(20 * time.Millisecond)},
		"nats": {client.WithNATS(natsConn(t, f)), client.WithPollInterval(never)},
	} {
		t.Run(name, func(t *testing.T) {
			c := newClient(t, f.URL, opts...)
			req := chatJob("tiny-a", "p")
			req.Priority, req.Program = "low", "nightly-"+name
			id, err := c.SubmitAsync(testCtx(t), req)
			if err != nil {
				t.Fatal(err)
			}
			j, err := c.Job(testCtx(t), id)
			if err != nil || j.Priority != "low" || j.Program != "nightly-"+name {
				t.Fatalf("Job = %+v, %v", j, err)
			}
			l, err := c.Jobs(testCtx(t), client.JobFilter{Program: "nightly-" + name})
			if err != nil || len(l.Jobs) != 1 || l.Jobs[0].ID != id {
				t.Fatalf("Jobs of program nightly-%s = %+v, %v", name, l, err)
			}
			req.Priority = "urgent"
			if _, err := c.SubmitAsync(testCtx(t), req); err == nil {
				t.Fatal("a bad priority was accepted")
			}
		})
	}
}
