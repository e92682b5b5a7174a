package gateway

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A streamed call (and an image call) on foreman C whose job runs on foreman A, on
// another node of a NATS cluster whose route to C's node is down as the job runs: A's
// node knows nothing of C's feed, and would drop every frame and the final marker. A
// holds the answer until its ping reaches the feed (ADR-0072), which it does once the
// route is back, and the caller gets the whole answer, byte for byte what the target
// sent. Before, a streamed caller got 502 "stream gap", and so did an image call (the
// stored result answers only a non-streamed chat's).
func TestSyncCrossNodeAnswerHeldUntilTheCallerIsHeard(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node NATS cluster; skipped with -short")
	}
	const caller, runner, leader = 0, 1, 2
	models := ollamatest.WithModels(ollamatest.Model{Name: "tiny-a"}, ollamatest.Model{Name: "pic", Image: true})
	cl := brokertest.NewCluster(t, 3)
	stC := cl.OpenOn(t, caller, nil)
	// Held as long as the test needs: the route comes back when the target is done.
	stA := cl.OpenOn(t, runner, func(c *broker.Config) { c.ReaderWait = 5 * time.Minute })

	gwC := startClusterGateway(t, stC, models)
	fakeA := ollamatest.New(t, models)
	sent := recordAnswers(t, fakeA.URL)
	startClusterWorker(t, stA, sent.URL)

	cases := []struct{ path, body string }{
		{"/api/chat", `{"model":"tiny-a","messages":[{"role":"user","content":"tell me"}],"stream":true}`},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"tell me"}],"stream":true}`},
		{"/v1/images/generations", `{"model":"pic","prompt":"a lighthouse","size":"512x512"}`},
	}
	// A first call of each makes its queue's consumer, whose leader moves with the
	// others: made with the route cut, it might need the meta leader on the caller's node.
	setup := testCtx(t, 2*time.Minute)
	for _, c := range cases {
		if r := post(t, setup, gwC, c.path, []byte(c.body)); r.Status != http.StatusOK {
			t.Fatalf("first call of %s: %d %s", c.path, r.Status, r.Body)
		}
	}
	cl.LeadTo(t, leader)
	// The calls under test have their time from here: LeadTo's elections, one per stream
	// and consumer, take tens of seconds under load.
	ctx := testCtx(t, 4*time.Minute)

	for _, c := range cases {
		cl.CutRoute(caller, runner)
		healed := false
		heal := func() {
			if !healed {
				healed = true
				cl.HealRoute(caller, runner)
			}
		}
		t.Cleanup(heal)
		before := 0 // the target's calls on the path so far
		for _, call := range fakeA.Calls() {
			if call.Path == c.path {
				before++
			}
		}
		got := make(chan rawResponse, 1)
		go func() { got <- post(t, ctx, gwC, c.path, []byte(c.body)) }()
		// The target answered in full while the route was down; a call answered before
		// that is no held answer.
		finished := make(chan error, 1)
		go func() { finished <- fakeA.WaitFinished(ctx, c.path, before+1) }()
		var r rawResponse
		select {
		case r = <-got:
			t.Fatalf("%s: answered before the target finished: %d %s", c.path, r.Status, r.Body)
		case err := <-finished:
			if err != nil {
				t.Fatalf("%s: the target's answer: %v", c.path, err)
			}
		}
		heal()
		r = <-got
		// The proxy's copy may end a moment after the worker read the answer's last byte.
		eventually(t, 10*time.Second, c.path+": the recorded answer", func() bool { return len(sent.answers(c.path)) > before })
		want := sent.answers(c.path)[before]
		if r.Status != http.StatusOK || !bytes.Equal(r.Body, want.body) {
			t.Errorf("%s: %d %q, want 200 with the target's %d bytes %q", c.path, r.Status, r.Body, len(want.body), want.body)
		}
		if r.CType != want.ctype {
			t.Errorf("%s: Content-Type %q, want the target's %q", c.path, r.CType, want.ctype)
		}
		id := r.Header.Get(HeaderJobID)
		var j *broker.Job
		eventually(t, 30*time.Second, "job "+id+" ended, read from the store", func() bool {
			var err error
			j, _, err = stA.Get(ctx, id)
			return err == nil && j.State.Terminal()
		})
		if _, boot := j.CurrentRunner(); j.State != broker.StateDone || boot != stA.BootID() {
			t.Errorf("%s: job %s %s, run by %q: want done on foreman A (%s)", c.path, id, j.State, boot, stA.BootID())
		}
	}
}
