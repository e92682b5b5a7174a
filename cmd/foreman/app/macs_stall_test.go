package app_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// Two foremen on one NATS, both Macs with alpha. Mac A's runner stops mid-answer in
// every chat while its Ollama answers the polls; Mac B is busy when the job comes. Mac A
// gives the attempt up (a stall) and leaves the job to Mac B, which its entry shows
// reachable with alpha, instead of taking it back at the end of its back-off: the job
// ends done on Mac B, Mac A called once (ADR-0066).
func TestSeveralMacsJobStalledOnOneRunsOnTheOther(t *testing.T) {
	macA := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	macB := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}, ollamatest.Model{Name: "beta:latest"}))
	macA.FailNextOn("/api/chat", 1<<20, ollamatest.StallMidStream)
	releaseB := macB.Hold("beta")
	defer releaseB()
	nurl := sharedNATS(t)
	fa := startForeman(t, nurl, "mac-a", macA.URL, func(c *app.Config) { c.StreamIdleTimeout = 300 * time.Millisecond })
	fb := startForeman(t, nurl, "mac-b", macB.URL)
	waitTargets(t, fa, 2)
	waitTargets(t, fb, 2)

	nc, err := nats.Connect(nurl, nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	s, err := broker.Open(context.Background(), broker.Config{Conn: nc, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	submit := func(model string) *broker.Job {
		t.Helper()
		j, err := s.Submit(ctx, &broker.Job{Model: model, Kind: broker.KindChat},
			[]byte(`{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	busy := submit("beta") // only Mac B has beta
	if err := macB.WaitStarted(ctx, "beta", 1); err != nil {
		t.Fatal(err)
	}
	j := submit("alpha")
	eventually(t, 20*time.Second, "the job given up on Mac A", func() bool {
		got, _, err := s.Get(ctx, j.ID)
		return err == nil && got.State == broker.StateRetrying && got.Attempt == 1
	})
	releaseB()
	waitJob(t, s, busy.ID)
	got := waitJob(t, s, j.ID)
	if got.Runner != "mac-b" || got.Attempt != 2 {
		t.Errorf("the job ended on %q after attempt %d, want mac-b after 2", got.Runner, got.Attempt)
	}
	chats := func(target *ollamatest.Server) int {
		n := 0
		for _, c := range target.Calls() {
			if c.Path == "/api/chat" && c.Model == "alpha:latest" {
				n++
			}
		}
		return n
	}
	if n := chats(macA); n != 1 {
		t.Errorf("Mac A was called %d times for the job, want once: it took the job back", n)
	}
	if n := chats(macB); n != 1 {
		t.Errorf("Mac B was called %d times for the job, want once", n)
	}
}
