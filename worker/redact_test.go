package worker_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// lockedBuffer is a log sink safe for the worker's goroutines and the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestRetryingRecordHidesTargetPassword: a connection error to a target whose URL holds
// a password (FOREMAN_OLLAMA_URL=http://user:pw@…) leaves the password out of the
// retrying job record, so out of its state event (NATS and webhooks), and out of the
// worker's log.
func TestRetryingRecordHidesTargetPassword(t *testing.T) {
	t.Parallel()
	const password = "s3cret"
	tb := setup(t)
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var err error
	tb.target, err = ollama.NewClient(ollama.ClientConfig{
		BaseURL: strings.Replace(tb.fake.URL, "://", "://user:"+password+"@", 1), Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	tb.fake.FailNext(1, ollamatest.DropConnection)
	j := tb.chat(t, "tiny-a", 1)
	events := make(chan []byte, 64)
	sub, err := tb.b.Conn.Subscribe(broker.StateSubject(j.ID), func(m *nats.Msg) { events <- m.Data })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := tb.b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	tb.start(t, worker.Config{Logger: log, RetryDelay: time.Millisecond})

	var retrying *broker.Job
	ctx := waitCtx(t)
	for retrying == nil {
		select {
		case data := <-events:
			if bytes.Contains(data, []byte(password)) {
				t.Errorf("a state event shows the password: %s", data)
			}
			e, err := broker.DecodeJob(data)
			if err != nil {
				t.Fatal(err)
			}
			if e.State == broker.StateRetrying {
				retrying = e
			}
			if e.State.Terminal() {
				t.Fatalf("job ended %s (%s) without retrying", e.State, e.Error)
			}
		case <-ctx.Done():
			t.Fatal("no retrying event")
		}
	}
	if !strings.Contains(retrying.Error, "xxxxx") {
		t.Errorf("retrying error %q, want the redacted target URL", retrying.Error)
	}
	tb.waitState(t, j.ID, broker.StateDone)
	if !strings.Contains(logs.String(), "job will retry") {
		t.Fatalf("the retry was not logged:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), password) {
		t.Errorf("the log shows the password:\n%s", logs.String())
	}
}

// A job Ollama refused as a caller's mistake (400: a model without tools; 404: no such
// model) is the caller's to mend and logged at info; one the target failed on its side,
// or a proxy in front of it refused (413), is logged at warn, where an operator watching
// warnings looks. The line names the target's HTTP status, and none where there was none
// (an error line in a 200 stream), rather than status=0.
func TestFailedJobIsAWarningOnlyWhenNotTheCallersMistake(t *testing.T) {
	t.Parallel()
	tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(3)})
	type logged struct{ level, status string }
	want := map[string]logged{}
	for _, f := range []struct {
		fail ollamatest.Failure
		want logged
	}{
		{ollamatest.FailStatus(400, "tiny-a does not support tools"), logged{"level=INFO", "status=400"}},
		{ollamatest.FailStatus(404, `model "tiny-a" not found, try pulling it first`), logged{"level=INFO", "status=404"}},
		{ollamatest.StreamError("template: :1: function \"bad\" not defined"), logged{"level=WARN", ""}},
		{ollamatest.FailStatus(500, "template: :1: function \"bad\" not defined"), logged{"level=WARN", "status=500"}},
		{ollamatest.FailStatus(413, "Request Entity Too Large"), logged{"level=WARN", "status=413"}},
	} {
		tb.fake.FailNext(1, f.fail)
		want[tb.chat(t, "tiny-a", 1).ID] = f.want
	}
	var logs lockedBuffer
	tb.start(t, worker.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	for id := range want {
		tb.waitState(t, id, broker.StateFailed)
	}
	failedLine := func(id string) string {
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, `msg="job failed"`) && strings.Contains(line, "job_id="+id) {
				return line
			}
		}
		return ""
	}
	for id, w := range want {
		eventually(t, 10*time.Second, "job "+id+"'s failure logged", func() bool { return failedLine(id) != "" })
		line := failedLine(id)
		if !strings.Contains(line, " "+w.level+" ") {
			t.Errorf("job %s's failure logged as %q, want %s", id, line, w.level)
		}
		if w.status == "" && strings.Contains(line, "status=") {
			t.Errorf("job %s's failure logged as %q, want no status: there was none", id, line)
		}
		if w.status != "" && !strings.Contains(line, " "+w.status) {
			t.Errorf("job %s's failure logged as %q, want %s", id, line, w.status)
		}
	}
}
