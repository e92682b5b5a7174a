package app_test

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// An operator moves foreman from its embedded server to a NATS cluster (sets
// FOREMAN_NATS_URL) while jobs wait in the embedded store: foreman neither runs nor shows
// them there, and says so at its start, with their number, the directory, and what to do.
func TestSwitchToNATSURLTellsOfTheJobsLeftInTheDataDir(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	release := fake.Hold("tiny-a")
	defer release()
	dir := t.TempDir()
	embedded := startOnDir(t, dir, fake.URL, nil)
	for range 2 {
		if code, body, _ := submitJob(t, embedded, "tiny-a"); code != http.StatusAccepted {
			t.Fatalf("submit: %d %s", code, body)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	// One job cut short as it ran, one waiting; a short deadline, as the running job may
	// take most of it.
	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	_ = embedded.Shutdown(sctx)
	scancel()

	var log logLines
	a, err := app.Start(ctx, app.Config{
		Addr: "127.0.0.1:0", OllamaURL: fake.URL, NATSURL: sharedNATS(t), NATSReplicas: 1, DataDir: dir,
		TargetName: "studio", PollInterval: 200 * time.Millisecond,
	}, slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	stopForeman(t, a)
	var line string
	for l := range strings.Lines(log.String()) {
		if strings.Contains(l, "jobs of the embedded NATS server") {
			line = l
		}
	}
	if !strings.Contains(line, "jobs=2") || !strings.Contains(line, "data_dir="+dir) || !strings.Contains(line, "without FOREMAN_NATS_URL") {
		t.Errorf("no warning of the 2 jobs left in %s; log:\n%s", dir, log.String())
	}

	// Started on the directory again, the embedded foreman still has them and runs them.
	back := startOnDir(t, dir, fake.URL, nil)
	release()
	eventually(t, 30*time.Second, "the left jobs run", func() bool {
		n, err := back.Store().QueueLen(context.Background())
		return err == nil && n == 0
	})
}
