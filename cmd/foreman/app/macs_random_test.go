package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// endsSeen counts, from the state events on a shared NATS, how often each job went from
// a waiting or running state to an end (a job ends exactly once).
type endsSeen struct {
	mu    sync.Mutex
	last  map[string]broker.State
	ends  map[string]int
	final map[string]broker.State
}

func watchEnds(t *testing.T, natsURL string) *endsSeen {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return watchEndsOn(t, nc)
}

// watchEndsOn is watchEnds on connection nc (an embedded server's, which has no listener).
func watchEndsOn(t *testing.T, nc *nats.Conn) *endsSeen {
	t.Helper()
	e := &endsSeen{last: map[string]broker.State{}, ends: map[string]int{}, final: map[string]broker.State{}}
	if _, err := nc.Subscribe("foreman.job.*.state", func(m *nats.Msg) {
		var j broker.Job
		if json.Unmarshal(m.Data, &j) != nil || j.ID == "" {
			return
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if prev, ok := e.last[j.ID]; (!ok || !prev.Terminal()) && j.State.Terminal() {
			e.ends[j.ID]++
			e.final[j.ID] = j.State
		}
		e.last[j.ID] = j.State
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *endsSeen) ended(id string) (broker.State, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.final[id], e.ends[id]
}

// queueLists is what GET /queue shows: the job running here and the jobs of its lists.
type queueLists struct {
	Running *struct {
		ID string `json:"id"`
	} `json:"running"`
	Queued           []queuedID `json:"queued"`
	RunningElsewhere []queuedID `json:"running_elsewhere"`
	WaitingElsewhere []queuedID `json:"waiting_elsewhere"`
}

type queuedID struct {
	JobID string `json:"job_id"`
}

// queueOf is GET /queue?limit=limit of a.
func queueOf(t *testing.T, a *app.App, limit int) queueLists {
	t.Helper()
	code, b := call(t, a, http.MethodGet, fmt.Sprintf("/queue?limit=%d", limit), "")
	if code != http.StatusOK {
		t.Fatalf("GET /queue: %d %s", code, b)
	}
	var q queueLists
	if err := json.Unmarshal(b, &q); err != nil {
		t.Fatalf("GET /queue: %v: %s", err, b)
	}
	return q
}

// queueIDs lists every job id GET /queue of a shows, in any of its lists.
func queueIDs(t *testing.T, a *app.App) []string {
	t.Helper()
	q := queueOf(t, a, 1000)
	var ids []string
	if q.Running != nil {
		ids = append(ids, q.Running.ID)
	}
	for _, l := range [][]queuedID{q.Queued, q.RunningElsewhere, q.WaitingElsewhere} {
		for _, j := range l {
			ids = append(ids, j.JobID)
		}
	}
	return ids
}

// Two foremen on one NATS, mac-a with alpha and shared, mac-b with beta and shared, under
// seeded random submits (through either foreman; classes and programs mixed), sync chats
// through mac-a's foreman, cancels,
// mac-a's Ollama down and back, shared deleted on mac-a and back, and a stop (seed 1) or a
// crash (seed 2) and restart of mac-b's foreman, the stop where it can be in the middle
// of a job: every job ends exactly once, none runs on a Mac lacking its model or
// on two Macs at once, an accepted cancel sticks, none is lost across the stop, and
// neither foreman's GET /queue keeps listing an ended job.
func TestSeveralMacsUnderRandomWorkloads(t *testing.T) {
	for _, seed := range []uint64{1, 2} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { severalMacsRandom(t, seed) })
	}
}

func severalMacsRandom(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	var steps []string
	step := func(format string, args ...any) { steps = append(steps, fmt.Sprintf(format, args...)) }
	defer func() {
		if t.Failed() {
			t.Logf("seed %d, steps:\n%s", seed, strings.Join(steps, "\n"))
		}
	}()

	const tokens, tokenDelay = 6, 25 * time.Millisecond
	// answered says whether c was a chat answered whole: the fake spends tokenDelay on
	// each token, so a call refused (a model just deleted, the Mac down) lasts less.
	answered := func(c ollamatest.Call) bool {
		return c.Finished && !c.Canceled && c.Failure == "" && c.Ended.Sub(c.Started) >= tokens*tokenDelay
	}
	opts := []ollamatest.Option{ollamatest.WithLoadDelay(20 * time.Millisecond), ollamatest.WithTokenDelay(tokenDelay), ollamatest.WithTokens(tokens)}
	macA := ollamatest.New(t, append(opts, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}, ollamatest.Model{Name: "shared:latest"}))...)
	macB := ollamatest.New(t, append(opts, ollamatest.WithModels(ollamatest.Model{Name: "beta:latest"}, ollamatest.Model{Name: "shared:latest"}))...)
	nurl := sharedNATS(t)
	ends := watchEnds(t, nurl)
	crash := seed%2 == 0 // else an orderly stop
	short := func(c *app.Config) { c.AckWait = time.Second }
	fa := startForeman(t, nurl, "mac-a", macA.URL, short)
	fb := startForeman(t, nurl, "mac-b", macB.URL, short)
	waitTargets(t, fa, 2)
	waitTargets(t, fb, 2)
	foremen := []*app.App{fa, fb}
	names := []string{"mac-a", "mac-b"}

	type sent struct {
		id, model, prompt string
		cancel            int // the answer to its DELETE, 0 when none
	}
	var jobs []*sent
	models := []string{"alpha", "beta", "shared"}
	const ops = 60
	stopAt := 10 + rng.IntN(ops-20)
	restartAt := stopAt + 3 + rng.IntN(8)
	stopped := false
	hasShared := true // on mac-a
	var syncWG sync.WaitGroup
	var syncMu sync.Mutex
	var syncJobs []*sent
	t.Cleanup(syncWG.Wait) // after a failure too: the calls report to t
	aDown := false
	for i := range ops {
		switch {
		case i == stopAt:
			// Stopped, where it can be, in the middle of a job (a bounded look, not a
			// condition of the test: with no job in flight the stop is still one).
			for range 300 {
				if macB.InFlight() > 0 {
					break
				}
				<-time.After(10 * time.Millisecond)
			}
			step("%d: mac-b has %d calls in flight", i, macB.InFlight())
			if crash {
				step("%d: crash mac-b's foreman", i)
				fb.Crash()
			} else {
				step("%d: stop mac-b's foreman", i)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if err := fb.Shutdown(ctx); err != nil {
					t.Errorf("stop mac-b: %v", err)
				}
				cancel()
			}
			stopped = true
			continue
		case i == restartAt:
			step("%d: restart mac-b's foreman", i)
			fb = startForeman(t, nurl, "mac-b", macB.URL, short)
			foremen[1] = fb
			stopped = false
			continue
		}
		via := rng.IntN(2)
		if stopped {
			via = 0
		}
		switch r := rng.IntN(10); {
		case r == 0 && len(jobs) > 0:
			m := models[rng.IntN(len(models))]
			prompt := fmt.Sprintf("s%d-sync%d", seed, i)
			syncWG.Add(1)
			go func() {
				defer syncWG.Done()
				req, _ := http.NewRequest(http.MethodPost, "http://"+fa.Addr()+"/api/chat", strings.NewReader(fmt.Sprintf(`{"model":%q,"stream":false,"messages":[{"role":"user","content":%q}]}`, m, prompt)))
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Errorf("sync %s: %v", prompt, err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				syncMu.Lock()
				defer syncMu.Unlock()
				if resp.StatusCode != 200 {
					t.Errorf("sync %s %s: %d %s", m, prompt, resp.StatusCode, b)
				}
				syncJobs = append(syncJobs, &sent{id: resp.Header.Get("X-Foreman-Job-Id"), model: m, prompt: prompt})
			}()
			step("%d: sync %s (%s) via mac-a", i, m, prompt)
		case r < 7 || len(jobs) == 0:
			m := models[rng.IntN(len(models))]
			prompt := fmt.Sprintf("s%d-j%d", seed, len(jobs))
			prio := []string{"high", "normal", "low"}[rng.IntN(3)]
			prog := []string{"ann", "bob", "cy"}[rng.IntN(3)]
			code, b := call(t, foremen[via], http.MethodPost, "/jobs",
				fmt.Sprintf(`{"kind":"chat","model":%q,"priority":%q,"program":%q,"messages":[{"role":"user","content":%q}]}`, m, prio, prog, prompt))
			if code != http.StatusAccepted {
				t.Fatalf("submit %s via %s: %d %s", m, names[via], code, b)
			}
			var j struct {
				ID string `json:"job_id"`
			}
			_ = json.Unmarshal(b, &j)
			jobs = append(jobs, &sent{id: j.ID, model: m, prompt: prompt})
			step("%d: submit %s %s %s %s (%s) via %s", i, j.ID, m, prio, prog, prompt, names[via])
		case r == 9 && i%3 == 0:
			down := rng.IntN(2) == 0
			step("%d: mac-a's Ollama down: %v", i, down)
			macA.SetDown(down)
			aDown = down
			continue
		case r == 9 && i%3 == 1 && !aDown:
			if hasShared {
				step("%d: shared deleted on mac-a", i)
				code, b := callURL(t, http.MethodDelete, macA.URL+"/api/delete", `{"model":"shared"}`)
				if code != http.StatusOK {
					t.Fatalf("delete shared on mac-a: %d %s", code, b)
				}
			} else {
				step("%d: shared back on mac-a", i)
				macA.AddModel(ollamatest.Model{Name: "shared:latest"})
			}
			hasShared = !hasShared
			continue
		case r < 8:
			j := jobs[rng.IntN(len(jobs))]
			if j.cancel != 0 {
				continue
			}
			code, b := call(t, foremen[via], http.MethodDelete, "/jobs/"+j.id, "")
			j.cancel = code
			step("%d: cancel %s via %s: %d", i, j.id, names[via], code)
			if code != http.StatusOK && code != http.StatusAccepted && code != http.StatusConflict {
				t.Errorf("cancel %s: %d %s", j.id, code, b)
			}
		default:
			for k, a := range foremen {
				if k == 1 && stopped {
					continue
				}
				step("%d: GET /queue via %s: %v", i, names[k], queueIDs(t, a))
			}
		}
	}
	macA.SetDown(false)
	if !hasShared {
		macA.AddModel(ollamatest.Model{Name: "shared:latest"})
	}
	if stopped {
		step("end: restart mac-b's foreman")
		fb = startForeman(t, nurl, "mac-b", macB.URL, short)
		foremen[1] = fb
	}

	syncWG.Wait()
	jobs = append(jobs, syncJobs...)
	// Every job ends, exactly once.
	for _, j := range jobs {
		eventually(t, 30*time.Second, "job "+j.id+" ("+j.model+") ended", func() bool {
			_, n := ends.ended(j.id)
			return n > 0
		})
	}
	for _, j := range jobs {
		rec, _, err := fa.Store().Get(context.Background(), j.id)
		if err != nil {
			t.Errorf("job %s: %v", j.id, err)
			continue
		}
		final, n := ends.ended(j.id)
		if n != 1 {
			t.Errorf("job %s (%s) ended %d times", j.id, j.model, n)
		}
		if rec.State != final {
			t.Errorf("job %s: record %s, its end event %s", j.id, rec.State, final)
		}
		switch j.cancel {
		case http.StatusOK, http.StatusAccepted:
			if rec.State != broker.StateCanceled {
				t.Errorf("job %s canceled (%d) ended %s", j.id, j.cancel, rec.State)
			}
		default:
			if rec.State != broker.StateDone {
				t.Errorf("job %s (%s, cancel %d) ended %s: %s", j.id, j.model, j.cancel, rec.State, rec.Error)
			}
		}
	}
	// No Mac ran a model it lacks; no job ran on both Macs at once.
	ownModelsOnly(t, "mac-a", macA, "alpha:latest", "shared:latest")
	ownModelsOnly(t, "mac-b", macB, "beta:latest", "shared:latest")
	type run struct {
		mac        string
		start, end time.Time
		whole      bool
	}
	runs := map[string][]run{}
	for k, mac := range []*ollamatest.Server{macA, macB} {
		for _, c := range mac.Calls() {
			if c.Path != "/api/chat" {
				continue
			}
			for _, j := range jobs {
				if strings.Contains(string(c.Body), `"`+j.prompt+`"`) {
					runs[j.id] = append(runs[j.id], run{names[k], c.Started, c.Ended, answered(c)})
				}
			}
		}
	}
	for id, rs := range runs {
		whole := 0
		for a, r := range rs {
			if r.whole {
				whole++
			}
			for _, o := range rs[a+1:] {
				if r.mac != o.mac && r.start.Before(o.end) && o.start.Before(r.end) {
					t.Errorf("job %s ran on %s and %s at once", id, r.mac, o.mac)
				}
			}
		}
		if whole > 1 {
			t.Errorf("job %s ran to its end %d times: %+v", id, whole, rs)
		}
	}
	// Neither foreman's queue view keeps an ended job.
	for k, a := range foremen {
		var ids []string
		defer func() {
			if len(ids) > 0 {
				t.Logf("%s's GET /queue still lists %v", names[k], ids)
			}
		}()
		eventually(t, 10*time.Second, names[k]+"'s GET /queue empty once every job ended", func() bool {
			ids = queueIDs(t, a)
			return len(ids) == 0
		})
	}
}

func callURL(t *testing.T, method, url, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}
