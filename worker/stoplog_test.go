package worker_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A stop lets the running job finish, for up to most of FOREMAN_SHUTDOWN_TIMEOUT (30s):
// the log says so, with the job, rather than "shutting down" and then nothing for as
// long, which looks like a hung foreman to the operator who pressed Ctrl-C.
func TestStopSaysItWaitsForTheRunningJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	defer release()
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	j := tb.chat(t, "tiny-a", 1)
	w := tb.start(t, worker.Config{Logger: log})
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	tb.waitState(t, j.ID, broker.StateLoading)
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- w.Stop(ctx) }()
	eventually(t, 20*time.Second, "the stop's log line", func() bool {
		return countLines(logs.String(), `msg="waiting for the running job to finish before stopping`, "job_id="+j.ID, "model=tiny-a", "at_most=") == 1
	})
	release() // the job finishes, and the stop with it
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	tb.waitState(t, j.ID, broker.StateDone)
}
