package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// postedJob is an async job a caller posted: id is set when its caller got a 202.
type postedJob struct {
	tag, id string
}

// A 202 from POST /jobs is a promise: foreman killed the moment callers get their 202s
// (here the 1st, the 8th and the 32nd of a burst from 16 callers, with more submits in
// flight each time) keeps every job it accepted. After the restarts each of them ends
// done, run to its end by the target exactly once, with one terminal revision. A job
// whose caller got no answer may exist or not, but runs at most once.
func TestJobsAcceptedRightBeforeAKillRunOnce(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	dir := t.TempDir()
	kills := []int{1, 8, 32}
	// Each round may interrupt the running job once: attempts must outlast the rounds.
	// ACK_WAIT stays at its 60s default, above the final wait: a job that had to wait it
	// out fails the test. (A kill in the moment the model's queue consumer is created can
	// leave it without its checksum file, and the server then skips it at the next start;
	// the store renews it, and its jobs run at once all the same.)
	env := []string{
		"FOREMAN_ADDR=127.0.0.1:0", "FOREMAN_DATA_DIR=" + dir, "FOREMAN_OLLAMA_URL=" + fake.URL,
		fmt.Sprintf("FOREMAN_MAX_ATTEMPTS=%d", len(kills)+3), "FOREMAN_LOG_LEVEL=info",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// No chat completes before the last restart: a run the target finished but foreman had
	// not yet recorded when it was killed would rightly run again, and is not this test.
	release := fake.Hold("")
	defer release()
	var posted []postedJob
	for round, killAt := range kills {
		c := startChild(t, env...)
		posted = append(posted, postUntilKilled(t, ctx, c, round, 16, killAt)...)
	}
	last := startChild(t, env...)
	base := "http://" + last.addr
	release()

	fin, finCancel := context.WithTimeout(ctx, 40*time.Second)
	defer finCancel()
	accepted := 0
	for _, p := range posted {
		if p.id == "" {
			continue
		}
		accepted++
		if st := waitTerminal(t, fin, base, p.id); st != string(broker.StateDone) {
			t.Fatalf("job %s (%s) got its 202 before the kill and ended %q, want done", p.id, p.tag, st)
		}
	}
	// Every run the target completed must end up as a done job, and no job may be left
	// half-run: wait for that (a final write may land after the queue looks empty), and
	// only then stop foreman.
	waitSettled(t, fin, base, fake, posted)
	last.kill(t)
	t.Logf("%d jobs posted, %d accepted", len(posted), accepted)

	calls := fake.Calls()
	for _, p := range posted {
		n := runsOf(calls, p.tag, true)
		switch {
		case p.id != "" && n != 1:
			t.Errorf("accepted job %s (%s) completed %d times at the target, want exactly once", p.id, p.tag, n)
		case p.id == "" && n > 1:
			t.Errorf("job %s, whose caller got no 202, completed %d times at the target, want at most once", p.tag, n)
		}
	}
	st, nc := openStoreDir(t, dir)
	for _, p := range posted {
		if p.id == "" {
			continue
		}
		if n := terminalRevisions(t, ctx, nc, p.id); n != 1 {
			t.Errorf("accepted job %s (%s): %d terminal revisions, want 1", p.id, p.tag, n)
		}
	}
	all, _, err := st.List(ctx, broker.ListOptions{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) < accepted {
		t.Errorf("%d job records, fewer than the %d accepted jobs", len(all), accepted)
	}
}

// waitSettled waits until no job runs or waits, the target serves nothing, no job is
// left between queued and an end, and there are as many done jobs as runs the target
// completed for posted. A submit that never got its answer may have left a record
// without its queue message: it stays queued (ADR-0024), and counts as settled.
func waitSettled(t *testing.T, ctx context.Context, base string, fake *ollamatest.Server, posted []postedJob) {
	t.Helper()
	var open []string
	done, completed, queue := 0, 0, ""
	for {
		queue = queueState(ctx, base)
		if queue == "empty" && fake.InFlight() == 0 {
			completed = 0
			calls := fake.Calls()
			for _, p := range posted {
				completed += runsOf(calls, p.tag, true)
			}
			open, done = open[:0], 0
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/jobs?limit=1000", nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				var page struct {
					Jobs []struct {
						ID    string       `json:"id"`
						State broker.State `json:"state"`
					} `json:"jobs"`
				}
				err := json.NewDecoder(resp.Body).Decode(&page)
				resp.Body.Close()
				for _, j := range page.Jobs {
					switch {
					case j.State == broker.StateDone:
						done++
					case j.State != broker.StateQueued && !j.State.Terminal():
						open = append(open, j.ID+" "+string(j.State))
					}
				}
				if err == nil && len(open) == 0 && done == completed {
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("jobs never settled: %d done, %d runs completed at the target (each done job must have run exactly once); open: %v; queue: %s; calls at the target: %d",
				done, completed, open, queue, fake.InFlight())
		case <-time.After(10 * time.Millisecond): // polling with a deadline
		}
	}
}

// postUntilKilled posts async jobs from callers concurrent callers, each on its own
// kept-alive connection, until the killAt-th 202 arrives: the caller that gets it kills
// foreman at once, before it reads the answer's body. Every other caller keeps posting
// until foreman is gone, so submits are in flight at the kill. It returns every job
// posted.
func postUntilKilled(t *testing.T, ctx context.Context, c *childForeman, round, callers, killAt int) []postedJob {
	t.Helper()
	base := "http://" + c.addr
	var (
		mu       sync.Mutex
		posted   []postedJob
		accepted int
		wg       sync.WaitGroup
	)
	for i := range callers {
		wg.Go(func() {
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer hc.CloseIdleConnections()
			for n := 0; ctx.Err() == nil; n++ {
				tag := fmt.Sprintf("kill202-r%d-c%02d-%04d", round, i, n)
				body := fmt.Sprintf(`{"model":"tiny-a","messages":[{"role":"user","content":%q}],"stream":false}`, tag)
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/jobs", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := hc.Do(req)
				if err != nil { // foreman is gone
					mu.Lock()
					posted = append(posted, postedJob{tag: tag})
					mu.Unlock()
					return
				}
				id := strings.TrimPrefix(resp.Header.Get("Location"), "/jobs/")
				mu.Lock()
				if resp.StatusCode == http.StatusAccepted {
					accepted++
					if accepted == killAt {
						_ = c.cmd.Process.Kill() // SIGKILL on the 202 itself
					}
				} else {
					id = ""
				}
				posted = append(posted, postedJob{tag: tag, id: id})
				mu.Unlock()
				if resp.StatusCode != http.StatusAccepted {
					t.Errorf("submit %s: status %d, want 202", tag, resp.StatusCode)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	select {
	case <-c.exited:
	case <-ctx.Done():
		t.Fatalf("round %d: foreman was not killed (%d of %d 202s)", round, accepted, killAt)
	}
	wg.Wait()
	return posted
}

// queueState is "empty" when GET /queue shows no job running or waiting, else what it
// shows.
func queueState(ctx context.Context, base string) string {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/queue", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var q struct {
		Running json.RawMessage   `json:"running"`
		Queued  []json.RawMessage `json:"queued"`
		Total   int               `json:"total"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&q); err != nil {
		return err.Error()
	}
	if q.Total == 0 && (len(q.Running) == 0 || string(q.Running) == "null") {
		return "empty"
	}
	return fmt.Sprintf("running %s, %d waiting, first %s", q.Running, q.Total, q.Queued)
}

// jobOutcome reads job id's state and error from GET /jobs/{id}.
func jobOutcome(t *testing.T, ctx context.Context, base, id string) (string, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/jobs/"+id, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var j struct {
		State string `json:"state"`
		Error string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&j); err != nil {
		t.Fatalf("GET /jobs/%s: %d %v", id, resp.StatusCode, err)
	}
	return j.State, j.Error
}

// A sync streaming chat whose foreman is killed right after the caller read the first
// line of the answer is not lost: its record is there after the restart and ends
// canceled, "caller gone" (ADR-0024), without reaching the target again. The target
// saw it once, the run the kill cut short, and nothing after.
func TestSyncChatKilledAtItsFirstTokenEndsCallerGone(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	// The target sends two frames, then nothing until foreman is gone: the kill lands
	// inside the answer, whatever the timing.
	fake.FailNextOn("/api/chat", 1, ollamatest.StallMidStream)
	dir := t.TempDir()
	env := []string{
		"FOREMAN_ADDR=127.0.0.1:0", "FOREMAN_DATA_DIR=" + dir, "FOREMAN_OLLAMA_URL=" + fake.URL, "FOREMAN_LOG_LEVEL=info",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	first := startChild(t, env...)
	const tag = "sync chat cut at its first token"
	body := fmt.Sprintf(`{"model":"tiny-a","messages":[{"role":"user","content":%q}],"stream":true}`, tag)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+first.addr+"/api/chat", strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	id := resp.Header.Get(gateway.HeaderJobID)
	if resp.StatusCode != http.StatusOK || id == "" {
		t.Fatalf("chat: %d, job id %q", resp.StatusCode, id)
	}
	line, err := bufio.NewReader(resp.Body).ReadBytes('\n')
	if err != nil || !json.Valid(line) {
		t.Fatalf("first line %q: %v", line, err)
	}
	first.kill(t)
	restarted := time.Now()

	second := startChild(t, env...)
	base := "http://" + second.addr
	fin, finCancel := context.WithTimeout(ctx, 40*time.Second) // below the 60s ACK_WAIT
	defer finCancel()
	if st := waitTerminal(t, fin, base, id); st == "" {
		t.Fatalf("sync job %s did not end after the restart", id)
	}
	if st, why := jobOutcome(t, ctx, base, id); st != string(broker.StateCanceled) || why != broker.CallerGoneReason {
		t.Fatalf("sync job %s: %s (%q), want canceled (%s)", id, st, why, broker.CallerGoneReason)
	}
	// An async job queued behind it runs once it is out of the way: by then a run of the
	// sync job after the restart would have reached the target.
	after := submitAsync(t, fin, base, "tiny-a", "queued after the restart")
	if st := waitTerminal(t, fin, base, after); st != string(broker.StateDone) {
		t.Fatalf("job after the restart ended %q, want done", st)
	}
	second.kill(t)

	calls := fake.Calls()
	if n := runsOf(calls, tag, false); n != 1 {
		t.Errorf("the target got the sync chat %d times, want once (the run the kill cut short)", n)
	}
	for _, c := range calls {
		if strings.Contains(string(c.Body), tag) && (!c.Started.Before(restarted) || (c.Finished && !c.Canceled)) {
			t.Errorf("sync chat call after the kill or run to its end: %+v", c)
		}
	}
	st, nc := openStoreDir(t, dir)
	rec, _, err := st.Get(ctx, id)
	if err != nil {
		t.Fatalf("sync job %s lost: %v", id, err)
	}
	// Its start may not be stored yet at its first token (a sync answer waits for the job,
	// not for the start, ADR-0036): started once, or not counted; never twice.
	if rec.Attempt > 1 {
		t.Errorf("sync job %s started %d times, want once at most", id, rec.Attempt)
	}
	if n := terminalRevisions(t, ctx, nc, id); n != 1 {
		t.Errorf("sync job %s: %d terminal revisions, want 1", id, n)
	}
}

// An async job whose foreman is killed right after its first streamed frame went out
// (seen as a NATS client sees it, on foreman.job.<id>.stream) runs again once after the
// restart, to its end, and is done: the target completed it exactly once.
func TestAsyncJobKilledAtItsFirstFrameCompletesOnce(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	fake.FailNextOn("/api/chat", 1, ollamatest.StallMidStream) // the first run stops after two frames
	release := fake.Hold("tiny-a")                             // until the test listens to the job's stream
	defer release()
	dir := t.TempDir()
	env := []string{
		"FOREMAN_ADDR=127.0.0.1:0", "FOREMAN_DATA_DIR=" + dir, "FOREMAN_OLLAMA_URL=" + fake.URL, "FOREMAN_LOG_LEVEL=info",
		"FOREMAN_NATS_LISTEN=127.0.0.1:0", "FOREMAN_NATS_USER=crash", "FOREMAN_NATS_PASSWORD=crash-pw",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	first := startChild(t, env...)
	if first.nats == "" {
		t.Fatal("no NATS listener in foreman's serving line")
	}
	const tag = "async job cut at its first frame"
	// Streamed, so that the job's frames go out one by one as the target sends them.
	resp, err := http.Post("http://"+first.addr+"/jobs", "application/json",
		strings.NewReader(fmt.Sprintf(`{"model":"tiny-a","messages":[{"role":"user","content":%q}],"stream":true}`, tag)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	id := strings.TrimPrefix(resp.Header.Get("Location"), "/jobs/")
	if resp.StatusCode != http.StatusAccepted || id == "" {
		t.Fatalf("submit: %d, Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	nc, err := nats.Connect(first.nats, nats.UserInfo("crash", "crash-pw"), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	frames := make(chan *nats.Msg, 64)
	if _, err := nc.ChanSubscribe(broker.StreamSubject(id), frames); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	release()
	select {
	case m := <-frames:
		if m.Header.Get("Foreman-Final") != "" {
			t.Fatalf("the job's stream ended before any frame: %v", m.Header)
		}
	case <-ctx.Done():
		t.Fatal("no frame of the job's stream arrived")
	}
	first.kill(t)
	nc.Close()

	second := startChild(t, env...)
	fin, finCancel := context.WithTimeout(ctx, 40*time.Second) // below the 60s ACK_WAIT
	defer finCancel()
	if st := waitTerminal(t, fin, "http://"+second.addr, id); st != string(broker.StateDone) {
		t.Fatalf("job %s ended %q after the restart, want done", id, st)
	}
	second.kill(t)

	calls := fake.Calls()
	if n := runsOf(calls, tag, true); n != 1 {
		t.Errorf("the target completed the job %d times, want exactly once", n)
	}
	if n := runsOf(calls, tag, false); n != 2 {
		t.Errorf("the target got the job %d times, want twice (the run cut short, then the one after the restart)", n)
	}
	st, nconn := openStoreDir(t, dir)
	rec, _, err := st.Get(ctx, id)
	if err != nil {
		t.Fatalf("job %s lost: %v", id, err)
	}
	if rec.State != broker.StateDone || rec.Attempt != 2 {
		t.Errorf("job %s: %s after %d attempts, want done after 2", id, rec.State, rec.Attempt)
	}
	if n := terminalRevisions(t, ctx, nconn, id); n != 1 {
		t.Errorf("job %s: %d terminal revisions, want 1", id, n)
	}
}
