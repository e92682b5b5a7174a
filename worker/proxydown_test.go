package worker_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A Mac gone behind a reverse proxy (nginx, Caddy, tailscale serve) is answered for by
// the proxy: 502 when the Mac refuses its connection, 504 when it does not answer in
// time. That is the target not there, as a refused connection is: the job whose call got
// it is retried, its error keeping the status, and the worker pauses until the target
// answers, so the jobs behind it wait instead of each failing at once. Once the Mac is
// back every job ends done.
func TestProxyGatewayErrorPausesTheWorker(t *testing.T) {
	t.Parallel()
	for _, code := range []int{http.StatusBadGateway, http.StatusGatewayTimeout} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			t.Parallel()
			tb := setup(t)
			tb.fake.SetDownWith(ollamatest.ProxyError(code))
			var jobs []*broker.Job
			for i := range 5 {
				jobs = append(jobs, tb.chat(t, "tiny-a", i))
			}
			w := tb.start(t, worker.Config{})
			status := fmt.Sprintf("HTTP %d", code)

			eventually(t, 10*time.Second, "the worker paused, or a job ended", func() bool {
				return w.Paused() != nil || len(ended(t, tb, jobs)) > 0
			})
			// Paused, it probes the target: a few probes answered by the proxy keep it so.
			eventually(t, 10*time.Second, "three probes of the target", func() bool {
				return len(ended(t, tb, jobs)) > 0 || callsOn(tb.fake, "/api/version") >= 3
			})
			if e := ended(t, tb, jobs); len(e) > 0 {
				t.Fatalf("jobs ended while the Mac was down: %v", e)
			}
			p := w.Paused()
			if p == nil || p.Reason != broker.PauseTargetUnreachable || !strings.Contains(p.Error, status) {
				t.Fatalf("pause %+v: want %s, saying %s", p, broker.PauseTargetUnreachable, status)
			}
			if n := len(inferenceCalls(tb.fake)); n != 1 {
				t.Errorf("%d calls while the Mac was down, want 1: the jobs behind the first wait", n)
			}
			first := record(t, tb, jobs[0].ID)
			if first.State != broker.StateRetrying || first.Attempt != 1 || !strings.Contains(first.Error, status) {
				t.Errorf("first job %s attempt %d error %q: want retrying after attempt 1, saying %s", first.State, first.Attempt, first.Error, status)
			}

			tb.fake.SetDownWith(ollamatest.Failure{})
			for i, j := range jobs {
				got := tb.waitState(t, j.ID, broker.StateDone)
				want := 1
				if i == 0 {
					want = 2 // the one whose call met the proxy
				}
				if got.Attempt != want {
					t.Errorf("job %d done after %d attempts, want %d", i, got.Attempt, want)
				}
			}
		})
	}
}

// A proxy's 502 to the inventory's polls says the target is not there: a worker that sees
// it takes no job (each would spend an attempt on the Mac gone) until a poll gets through.
func TestProxyGatewayErrorOnThePollsHoldsTheQueue(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := tb.polledInventory(t)
	tb.fake.SetDownWith(ollamatest.ProxyError(http.StatusBadGateway))
	if err := inv.Refresh(ctxT(t)); err == nil {
		t.Fatal("a poll of the Mac gone behind its proxy succeeded")
	}
	var jobs []*broker.Job
	for i := range 3 {
		jobs = append(jobs, tb.chat(t, "tiny-a", i))
	}
	w := tb.start(t, worker.Config{Inventory: inv})
	eventually(t, 10*time.Second, "the worker paused, or a job ended", func() bool {
		return w.Paused() != nil || len(ended(t, tb, jobs)) > 0
	})
	polls := callsOn(tb.fake, "/api/tags")
	eventually(t, 10*time.Second, "two more probes of the target", func() bool {
		return len(ended(t, tb, jobs)) > 0 || callsOn(tb.fake, "/api/tags") >= polls+2
	})
	if e := ended(t, tb, jobs); len(e) > 0 {
		t.Fatalf("jobs ended while the Mac was down: %v", e)
	}
	if p := w.Paused(); p == nil || p.Reason != broker.PauseTargetUnreachable || !strings.Contains(p.Error, "HTTP 502") {
		t.Fatalf("pause %+v: want %s, saying HTTP 502", p, broker.PauseTargetUnreachable)
	}
	if n := len(inferenceCalls(tb.fake)); n != 0 {
		t.Errorf("%d calls while the polls said the Mac was gone, want none", n)
	}

	tb.fake.SetDownWith(ollamatest.Failure{})
	for _, j := range jobs {
		if got := tb.waitState(t, j.ID, broker.StateDone); got.Attempt != 1 {
			t.Errorf("job done after %d attempts, want 1", got.Attempt)
		}
	}
}

// ended is the ids and states of the jobs that have ended.
func ended(t *testing.T, tb *testBundle, jobs []*broker.Job) []string {
	t.Helper()
	var out []string
	for _, j := range jobs {
		if rec := record(t, tb, j.ID); rec.State.Terminal() {
			out = append(out, fmt.Sprintf("%s %s (%s)", rec.ID, rec.State, rec.Error))
		}
	}
	return out
}

func record(t *testing.T, tb *testBundle, id string) *broker.Job {
	t.Helper()
	j, _, err := tb.b.Store.Get(ctxT(t), id)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// callsOn counts the fake's calls on path.
func callsOn(fake *ollamatest.Server, path string) int {
	n := 0
	for _, c := range fake.Calls() {
		if c.Path == path {
			n++
		}
	}
	return n
}
