package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// chaosGate lets chat calls through until the at-th one since arm, then holds that call
// and every later one until its connection ends (the kill). So no job can finish at the
// target between the test's last look at foreman and the kill, and what finished before
// is known to have been recorded: every completed run is then one the test can account for.
type chaosGate struct {
	mu      sync.Mutex
	n, at   int
	tripped chan struct{}
}

func (g *chaosGate) arm(at int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n, g.at, g.tripped = 0, at, make(chan struct{})
}

func (g *chaosGate) before(ctx context.Context, _ string) error {
	g.mu.Lock()
	g.n++
	hold := g.at > 0 && g.n >= g.at
	if g.at > 0 && g.n == g.at {
		close(g.tripped)
	}
	g.mu.Unlock()
	if hold {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func (g *chaosGate) wait() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.tripped
}

// chaosJob is an async job the test submitted.
type chaosJob struct {
	tag, id  string
	canceled bool // DELETE /jobs/{id} was sent
	ended    bool // seen terminal
}

// chaosSync is a sync streaming chat whose caller dies with the foreman of round round.
type chaosSync struct {
	tag   string
	round int
}

// Kill -9 foreman at random points, over many rounds of sync streaming chats, async jobs
// and cancels, restarting it on the same data dir each time. Then: every async job ends
// exactly once (one terminal state; done with one completed run at the target, or
// canceled when a cancel was asked for, with none), no job is lost, and no sync job whose
// caller died with its foreman reaches the target after that foreman is gone.
// FOREMAN_CHAOS_SEED=<n> replays a run.
func TestChaosKillRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("process-level chaos test; skipped with -short")
	}
	t.Parallel()
	seed := time.Now().UnixNano()
	if v := os.Getenv("FOREMAN_CHAOS_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseInt(v, 10, 64); err != nil {
			t.Fatalf("FOREMAN_CHAOS_SEED=%q: %v", v, err)
		}
	}
	t.Logf("chaos seed %d (FOREMAN_CHAOS_SEED=%d replays it)", seed, seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))

	const (
		rounds       = 8
		asyncPerRnd  = 6
		syncPerRound = 3
	)
	gate := &chaosGate{}
	fake := ollamatest.New(t, ollamatest.WithBeforeChat(gate.before), ollamatest.WithTokenDelay(time.Millisecond))
	dir := t.TempDir()
	// ACK_WAIT stays at its 60s default: the final wait below is shorter, so a job that
	// waited out ACK_WAIT after a kill fails the test. Every round may interrupt a job
	// once, so attempts must outlast the rounds.
	env := []string{
		"FOREMAN_ADDR=127.0.0.1:0", "FOREMAN_DATA_DIR=" + dir, "FOREMAN_OLLAMA_URL=" + fake.URL,
		"FOREMAN_MAX_ATTEMPTS=" + strconv.Itoa(rounds+3), "FOREMAN_LOG_LEVEL=info",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	models := []string{"tiny-a", "tiny-b"}

	var jobs []*chaosJob
	var syncs []chaosSync
	var launches []time.Time // launches[r]: when the foreman of round r was started
	for r := range rounds {
		gate.arm(1 + rng.IntN(4))
		launches = append(launches, time.Now())
		c := startChild(t, env...)
		base := "http://" + c.addr

		var callers sync.WaitGroup
		var fresh []*chaosJob
		for i := range asyncPerRnd + syncPerRound {
			model := models[rng.IntN(len(models))]
			if i%3 == 2 { // every third is a sync chat, spread among the async jobs
				tag := fmt.Sprintf("chaos-r%d-sync-%02d", r, i)
				syncs = append(syncs, chaosSync{tag: tag, round: r})
				callers.Go(func() { streamUntilGone(ctx, base, model, tag) })
				continue
			}
			j := &chaosJob{tag: fmt.Sprintf("chaos-r%d-async-%02d", r, i)}
			j.id = submitAsync(t, ctx, base, model, j.tag)
			jobs, fresh = append(jobs, j), append(fresh, j)
		}
		// Two of the round's async jobs get a cancel: at least seven chat calls are left to
		// run, more than the gate lets through.
		for _, i := range rng.Perm(len(fresh))[:2] {
			fresh[i].canceled = true
			cancelJob(t, ctx, base, fresh[i].id)
		}
		// Every sync chat is a stored job before the kill: its caller is really there.
		waitJobCount(t, ctx, base, len(jobs)+len(syncs))
		select {
		case <-gate.wait():
		case <-ctx.Done():
			t.Fatalf("round %d: the target never got the chat call the kill waits for", r)
		}
		waitRecorded(t, ctx, base, fake, jobs)
		c.kill(t)
		callers.Wait()
	}

	gate.arm(0)
	launches = append(launches, time.Now())
	last := startChild(t, env...)
	// Well below the 60s ACK_WAIT: the interrupted jobs must run at once.
	fin, finCancel := context.WithTimeout(ctx, 40*time.Second)
	defer finCancel()
	for _, j := range jobs {
		if st := waitTerminal(t, fin, "http://"+last.addr, j.id); st == "" {
			t.Fatalf("async job %s (%s) did not end after the last restart", j.id, j.tag)
		}
	}
	waitAllEnded(t, fin, "http://"+last.addr) // the sync jobs too
	last.kill(t)

	st, nc := openStoreDir(t, dir)
	calls := fake.Calls()
	for _, j := range jobs {
		rec, _, err := st.Get(ctx, j.id)
		if err != nil {
			t.Errorf("async job %s (%s) lost: %v", j.id, j.tag, err)
			continue
		}
		completed := runsOf(calls, j.tag, true)
		switch {
		case rec.State == broker.StateDone && completed == 1:
		case rec.State == broker.StateCanceled && j.canceled && completed == 0:
		default:
			t.Errorf("async job %s (%s, cancel sent %v): %s (%q) with %d completed runs; want done with 1, or canceled with 0 when a cancel was sent",
				j.id, j.tag, j.canceled, rec.State, rec.Error, completed)
		}
		if n := terminalRevisions(t, ctx, nc, j.id); n != 1 {
			t.Errorf("async job %s (%s): %d terminal revisions, want 1", j.id, j.tag, n)
		}
	}
	for _, s := range syncs {
		for _, c := range calls {
			if bytes.Contains(c.Body, []byte(s.tag)) && !c.Started.Before(launches[s.round+1]) {
				t.Errorf("sync chat %s of the foreman killed in round %d reached the target at %v, after the next foreman started (%v)",
					s.tag, s.round, c.Started, launches[s.round+1])
			}
		}
		if n := runsOf(calls, s.tag, false); n > 1 {
			t.Errorf("sync chat %s reached the target %d times, want at most once", s.tag, n)
		}
	}
	all, _, err := st.List(ctx, broker.ListOptions{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	nsync := 0
	for _, rec := range all {
		if !rec.Sync {
			continue
		}
		nsync++
		switch {
		case rec.State == broker.StateDone:
		case rec.State == broker.StateCanceled && rec.Error == broker.CallerGoneReason:
		default:
			t.Errorf("sync job %s: %s (%q), want done or canceled (%s)", rec.ID, rec.State, rec.Error, broker.CallerGoneReason)
		}
		if rec.Attempt > 1 {
			t.Errorf("sync job %s started %d times, want at most once", rec.ID, rec.Attempt)
		}
	}
	if nsync != len(syncs) || len(all) != len(jobs)+len(syncs) {
		t.Errorf("%d job records (%d sync), want %d (%d sync)", len(all), nsync, len(jobs)+len(syncs), len(syncs))
	}
	if t.Failed() {
		t.Logf("chaos seed %d", seed)
	}
}

// submitAsync posts an async chat whose prompt is tag and returns its job id.
func submitAsync(t *testing.T, ctx context.Context, base, model, tag string) string {
	t.Helper()
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}],"stream":false}`, model, tag)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/jobs", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("submit %s: %v", tag, err)
	}
	defer resp.Body.Close()
	var sub struct {
		JobID string `json:"job_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&sub); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit %s: %d %v", tag, resp.StatusCode, err)
	}
	return sub.JobID
}

// cancelJob sends DELETE /jobs/{id}; a job that finished first (409) is fine too.
func cancelJob(t *testing.T, ctx context.Context, base, id string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, base+"/jobs/"+id, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("cancel %s: %v", id, err)
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK, http.StatusAccepted, http.StatusConflict:
	default:
		t.Fatalf("cancel %s: %d", id, resp.StatusCode)
	}
}

// streamUntilGone is a sync streaming chat whose caller reads until foreman answers or
// goes away.
func streamUntilGone(ctx context.Context, base, model, tag string) {
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}],"stream":true}`, model, tag)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/chat", strings.NewReader(body))
	if err != nil {
		return
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
}

// jobState returns job id's state as GET /jobs/{id} answers it ("" on an error).
func jobState(ctx context.Context, base, id string) string {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/jobs/"+id, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var j struct {
		State string `json:"state"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&j)
	return j.State
}

// waitTerminal polls job id until it is terminal; "" when ctx ends first.
func waitTerminal(t *testing.T, ctx context.Context, base, id string) string {
	t.Helper()
	for {
		if st := broker.State(jobState(ctx, base, id)); st.Terminal() {
			return string(st)
		}
		select {
		case <-ctx.Done():
			return ""
		case <-time.After(10 * time.Millisecond): // polling with a deadline
		}
	}
}

// waitJobCount polls GET /jobs until it lists n jobs.
func waitJobCount(t *testing.T, ctx context.Context, base string, n int) {
	t.Helper()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/jobs?limit=1000", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			var page struct {
				Jobs []json.RawMessage `json:"jobs"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&page)
			resp.Body.Close()
			if len(page.Jobs) >= n {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("foreman never listed %d jobs", n)
		case <-time.After(10 * time.Millisecond): // polling with a deadline
		}
	}
}

// waitAllEnded polls GET /jobs until every job listed is terminal.
func waitAllEnded(t *testing.T, ctx context.Context, base string) {
	t.Helper()
	var open []string
	var lastErr error
	for {
		open = open[:0]
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/jobs?limit=1000", nil)
		resp, err := http.DefaultClient.Do(req)
		lastErr = err
		if err == nil {
			var page struct {
				Jobs []struct {
					ID    string       `json:"id"`
					State broker.State `json:"state"`
				} `json:"jobs"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&page)
			resp.Body.Close()
			for _, j := range page.Jobs {
				if !j.State.Terminal() {
					open = append(open, j.ID+" "+string(j.State))
				}
			}
			if len(page.Jobs) > 0 && len(open) == 0 {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("jobs still open after the last restart: %v (last error: %v)", open, lastErr)
		case <-time.After(10 * time.Millisecond): // polling with a deadline
		}
	}
}

// waitRecorded waits until every async job whose run the target completed is terminal in
// foreman: a kill after that cannot make a finished run count twice.
func waitRecorded(t *testing.T, ctx context.Context, base string, fake *ollamatest.Server, jobs []*chaosJob) {
	t.Helper()
	calls := fake.Calls()
	for _, j := range jobs {
		if j.ended || runsOf(calls, j.tag, true) == 0 {
			continue
		}
		if waitTerminal(t, ctx, base, j.id) == "" {
			t.Fatalf("job %s (%s) finished at the target but never ended in foreman", j.id, j.tag)
		}
		j.ended = true
	}
}

// runsOf counts the target's calls whose body carries tag; completedOnly counts only the
// calls that ran to their end.
func runsOf(calls []ollamatest.Call, tag string, completedOnly bool) int {
	n := 0
	for _, c := range calls {
		if !bytes.Contains(c.Body, []byte(tag)) {
			continue
		}
		if !completedOnly || (c.Finished && !c.Canceled) {
			n++
		}
	}
	return n
}

// terminalRevisions counts the revisions of job id's record that are in a terminal state.
func terminalRevisions(t *testing.T, ctx context.Context, nc *nats.Conn, id string) int {
	t.Helper()
	hist, err := brokertest.JobRecords(t, nc).History(ctx, "job."+id)
	if err != nil {
		t.Fatalf("history of %s: %v", id, err)
	}
	n := 0
	for _, e := range hist {
		if rec, err := broker.DecodeJob(e.Value()); err == nil && rec.State.Terminal() {
			n++
		}
	}
	return n
}

// openStoreDir opens the store a killed foreman left in dir, in this process, with the
// connection under it.
func openStoreDir(t *testing.T, dir string) (*broker.Store, *nats.Conn) {
	t.Helper()
	srv, err := natsd.Start(natsd.Config{DataDir: dir})
	if err != nil {
		t.Fatalf("open the data dir: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := broker.Open(ctx, broker.Config{Conn: nc})
	if err != nil {
		t.Fatal(err)
	}
	return st, nc
}
