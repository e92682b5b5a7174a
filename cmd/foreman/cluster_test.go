package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// Two foremen, each with its own target, share a 3-node NATS cluster; a node dies while
// jobs run: the one foreman A is connected to.
func TestClusterNodeKilled(t *testing.T) {
	clusterRun(t, func(c *brokertest.Cluster, a *app.App) int {
		name := a.Conn().ConnectedServerName()
		for i, ns := range c.Nodes {
			if ns.Name() == name {
				return i
			}
		}
		t.Fatalf("foreman is connected to %q, no node of the cluster", name)
		return -1
	})
}

// As above, but the node that dies leads the queue stream.
func TestClusterQueueLeaderKilled(t *testing.T) {
	clusterRun(t, func(c *brokertest.Cluster, _ *app.App) int {
		return c.StreamLeader(broker.QueueStream)
	})
}

// clusterRun submits 12 jobs through two foremen on a 3-node cluster, kills the node
// victim names once jobs are running, and checks that every job ends done exactly once
// and reached a target exactly once: a job handed out again after a lost write or ack
// (FOREMAN_ACK_WAIT later) runs twice, or starts a second attempt, and fails the test.
func clusterRun(t *testing.T, victim func(*brokertest.Cluster, *app.App) int) {
	if testing.Short() {
		t.Skip("3-node NATS cluster with two foremen; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	// Jobs of about half a second each: the kill comes while most are still to run.
	fakes := []*ollamatest.Server{
		ollamatest.New(t, ollamatest.WithTokenDelay(10*time.Millisecond), ollamatest.WithTokens(50)),
		ollamatest.New(t, ollamatest.WithTokenDelay(10*time.Millisecond), ollamatest.WithTokens(50)),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	var foremen []*app.App
	for i, fake := range fakes {
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("test", t.Name(), "foreman", i+1)
		// Each foreman names its own target, as FOREMAN_TARGET_NAME asks of foremen sharing
		// a NATS (by default both would take this machine's host name).
		a, err := app.Start(ctx, app.Config{Addr: "127.0.0.1:0", NATSURL: c.URLs(), OllamaURL: fake.URL, TargetName: fmt.Sprintf("mac-%d", i+1)}, log)
		if err != nil {
			t.Fatalf("start foreman %d: %v", i+1, err)
		}
		t.Cleanup(func() {
			sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer scancel()
			_ = a.Shutdown(sctx)
		})
		foremen = append(foremen, a)
	}
	base := func(i int) string { return "http://" + foremen[i%2].Addr() }

	const n = 12
	ids := make([]string, n)
	tags := make([]string, n)
	for i := range n {
		tags[i] = fmt.Sprintf("cluster-job-%02d", i)
		ids[i] = submitAsync(t, ctx, base(i), []string{"tiny-a", "tiny-b"}[i%2], tags[i])
	}
	// Kill once two jobs have reached a target (either foreman's), with most still to come.
	started := func() int {
		n := 0
		for _, fake := range fakes {
			for _, call := range fake.Calls() {
				if call.Model != "" {
					n++
				}
			}
		}
		return n
	}
	for started() < 2 {
		select {
		case <-ctx.Done():
			t.Fatalf("%d jobs started", started())
		case <-time.After(10 * time.Millisecond): // polling the fakes with a deadline
		}
	}
	c.Kill(victim(c, foremen[0]))
	// The jobs' ends are waited for from the kill, not from the start: the two nodes left
	// elect new leaders for the queue stream, the jobs bucket and each consumer the dead
	// node led, and under -race on a loaded 2-core machine that has taken most of a minute
	// (CI: the setup's 50 s ran out with seven jobs still queued). The counts below catch a
	// job run twice however long the wait.
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	for i, id := range ids {
		// Ask the foreman on the other side too: either may be the one reconnecting.
		if st := waitTerminalNo500(t, ctx, base(i+1), id); st != string(broker.StateDone) {
			t.Errorf("job %s (%s) ended %q, want done", id, tags[i], st)
		}
	}
	runs := map[string]int{}
	for _, fake := range fakes {
		for _, call := range fake.Calls() {
			for _, tag := range tags {
				if call.Model != "" && bytes.Contains(call.Body, []byte(tag)) {
					runs[tag]++
				}
			}
		}
	}
	for _, tag := range tags {
		if runs[tag] != 1 {
			t.Errorf("job %s reached a target %d times, want once", tag, runs[tag])
		}
	}
	// Exactly one terminal record each: the record's attempt says how many starts it saw.
	for i, id := range ids {
		j, err := terminalRecord(ctx, foremen[i%2].Store(), id)
		if err != nil {
			t.Errorf("read job %s: %v", id, err)
			continue
		}
		if j.State != broker.StateDone || j.Attempt != 1 {
			t.Errorf("job %s: state %s attempt %d, want done attempt 1", id, j.State, j.Attempt)
		}
	}
}

// terminalRecord reads job id's record until it is terminal, or ctx ends (then it returns
// the last one read). A read may be served by a replica still behind the bucket's leader
// (broker/leaderget.go), as one is for a while after a node died: it finds an older
// revision of a record another foreman already answered done, "working" say, not a
// record that went back.
func terminalRecord(ctx context.Context, s *broker.Store, id string) (*broker.Job, error) {
	for {
		j, _, err := s.Get(ctx, id)
		if err == nil && j.State.Terminal() {
			return j, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				return j, nil
			}
			return nil, err
		case <-time.After(10 * time.Millisecond): // polling with a deadline
		}
	}
}

// waitTerminalNo500 polls GET /jobs/{id} until the job is terminal; an answer of 500 (or
// a 503 without Retry-After) while the cluster elects leaders fails the test.
func waitTerminalNo500(t *testing.T, ctx context.Context, base, id string) string {
	t.Helper()
	for {
		status, retryAfter, st := jobAnswer(ctx, base, id)
		if status >= 500 && (status != http.StatusServiceUnavailable || retryAfter == "") {
			t.Errorf("GET /jobs/%s: %d (Retry-After %q) while the cluster recovers, want 200 or 503 with Retry-After", id, status, retryAfter)
		}
		if broker.State(st).Terminal() {
			return st
		}
		select {
		case <-ctx.Done():
			return ""
		case <-time.After(10 * time.Millisecond): // polling with a deadline
		}
	}
}

func jobAnswer(ctx context.Context, base, id string) (status int, retryAfter, state string) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/jobs/"+id, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", ""
	}
	defer resp.Body.Close()
	var j struct {
		State string `json:"state"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&j)
	return resp.StatusCode, resp.Header.Get("Retry-After"), j.State
}

// A cluster that lost its quorum answers a submit with 503 and Retry-After once the
// store's retries give up, never 500. (Reads of a record may still be served by the
// replica left.)
func TestClusterNoQuorumAnswers503(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node NATS cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	fake := ollamatest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	a, err := app.Start(ctx, app.Config{Addr: "127.0.0.1:0", NATSURL: c.URLs(), OllamaURL: fake.URL}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = a.Shutdown(sctx)
	})
	base := "http://" + a.Addr()
	id := submitAsync(t, ctx, base, "tiny-a", "no quorum")
	if st := waitTerminal(t, ctx, base, id); st != string(broker.StateDone) {
		t.Fatalf("job ended %q before the kill", st)
	}
	c.Kill(0)
	c.Kill(1)
	// What follows has its own time from the kill: the start on a forming cluster (its
	// streams made with three replicas) and the first job may take most of the 50 s under
	// load, and the submit below waits out the store's retries before its 503.
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if status, _, _ := jobAnswer(ctx, base, id); status != http.StatusOK && status != http.StatusServiceUnavailable {
		t.Errorf("GET /jobs/{id} without quorum: %d, want 200 (a replica's read) or 503", status)
	}
	body := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":false}`
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/jobs", strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("POST /jobs without quorum: %d %s, Retry-After %q; want 503 with Retry-After", resp.StatusCode, answer, resp.Header.Get("Retry-After"))
	}
}
