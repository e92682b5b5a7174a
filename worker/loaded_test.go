package worker_test

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A target that hangs as a whole (SIGSTOP) while a job runs answers neither that job nor
// the polls: what it holds is unknown. The view named the running job's model loaded
// until the attempt was given up, beside /healthz's empty loaded list and the polls
// saying the target is not there.
func TestQueueViewLoadedIsUnknownWhileTheTargetHangsUnderAJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := tb.polledInventory(t)
	w := tb.start(t, worker.Config{Inventory: inv})
	release := tb.fake.Hold("tiny-a")
	defer release()
	j := tb.chat(t, "tiny-a", 1)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if v.Running != j.ID || !slices.Equal(v.Loaded, []string{"tiny-a:latest"}) {
		t.Fatalf("running %q loaded %v while the target answers, want %s and [tiny-a:latest]", v.Running, v.Loaded, j.ID)
	}
	tb.goSilent(t, inv) // the held call stays open: the job still runs
	if v, err = w.QueueView(ctxT(t), time.Now()); err != nil {
		t.Fatal(err)
	}
	if v.Running != j.ID {
		t.Fatalf("running %q, want the job still running, %s", v.Running, j.ID)
	}
	if len(v.Loaded) != 0 {
		t.Errorf("loaded %v while the target answers no poll, want none known", v.Loaded)
	}
}

// A job whose model the target does not have (deleted since the last poll: 404) loads
// nothing: the worker counted its model loaded as soon as the job began, so the view
// named it loaded (in place of the model really loaded) until the next poll, and the
// next job of that model was recorded working, no load counted, though it would load.
func TestAJobOfAModelTheTargetLacksLoadsNothing(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := tb.polledInventory(t)
	w := tb.start(t, worker.Config{Inventory: inv})
	tb.waitState(t, tb.chat(t, "tiny-a", 1).ID, broker.StateDone)

	tb.fake.FailNext(2, ollamatest.FailStatus(404, `model "tiny-b" not found, try pulling it first`))
	gone := tb.chat(t, "tiny-b", 2)
	tb.waitState(t, gone.ID, broker.StateFailed)
	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v.Loaded, []string{"tiny-a:latest"}) {
		t.Errorf("loaded %v after a tiny-b job the target answered 404, want [tiny-a:latest] (the target's: %q)", v.Loaded, tb.fake.LoadedModel())
	}

	again := tb.chat(t, "tiny-b", 3)
	tb.waitEnded(t, again.ID)
	if got := statesOf(t, tb, again.ID); slices.Contains(got, broker.StateWorking) || !slices.Contains(got, broker.StateLoading) {
		t.Errorf("second tiny-b job's states %v, want loading (the target has tiny-a loaded), never working", got)
	}
}

// After the target went away and came back empty (Ollama restarted: nothing loaded),
// the next job of the model run last loads it. The worker re-read /api/ps only before a
// job of another model, so the job retried after the outage was recorded working, no
// load counted, its ETA without the load.
func TestAJobAfterTheTargetRestartedLoadsItsModel(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := tb.polledInventory(t)
	w := tb.start(t, worker.Config{Inventory: inv})
	tb.waitState(t, tb.chat(t, "tiny-a", 1).ID, broker.StateDone)
	if got := tb.fake.LoadedModel(); got != "tiny-a:latest" {
		t.Fatalf("fake has %q loaded after a tiny-a job", got)
	}
	loads := tb.fake.Loads()

	tb.fake.SetDown(true)
	j := tb.chat(t, "tiny-a", 2)
	states := watchStates(t, tb.b.Conn, j.ID)
	eventually(t, 30*time.Second, "the worker paused for the target", func() bool {
		p := w.Paused()
		return p != nil && p.Reason == broker.PauseTargetUnreachable
	})
	tb.fake.SetLoaded("") // restarted: nothing loaded
	tb.fake.SetDown(false)

	got := states.until(t)
	if got[len(got)-1] != broker.StateDone {
		t.Fatalf("states %v, want the job done after the outage", got)
	}
	i := slices.IndexFunc(got, func(s broker.State) bool { return s == broker.StateRetrying || s == broker.StateQueued })
	if i < 0 || !slices.Contains(got[i:], broker.StateLoading) {
		t.Errorf("states %v, want the attempt after the outage loading (the target came back empty)", got)
	}
	if n := tb.fake.Loads(); n != loads+1 {
		t.Errorf("fake loads %d, want %d: the retried job loads tiny-a", n, loads+1)
	}
}

// While the target is not there (its calls refused), the plan counts on the runner it
// ran last, as the pick will once it is back as it was: the view's positions follow the
// pick rule (ADR-0028). A worker that forgot that runner when a job's call was refused
// and it paused put an older job of another model first, and then ran the other order.
//
// The tiny-b job must reach the target and be refused: with the polls already saying
// the target is down, the worker probes before it takes a job and never calls with one
// (TestQueueViewKeepsTheLastRunnerWhilePausedBeforeAJob).
func TestQueueViewKeepsTheLastRunnerWhileTheTargetIsDown(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := tb.polledInventory(t)
	w := tb.start(t, worker.Config{Inventory: inv})
	tb.waitState(t, tb.chat(t, "tiny-a", 1).ID, broker.StateDone)
	tb.fake.SetDown(true) // the polls have not seen it: the worker takes the next job
	b := tb.chat(t, "tiny-b", 1)
	tb.waitState(t, b.ID, broker.StateRetrying)
	eventually(t, 10*time.Second, "the worker paused for the target", func() bool {
		p := w.Paused()
		return p != nil && p.Reason == broker.PauseTargetUnreachable
	})
	if refused := refusedCalls(tb.fake); !slices.Equal(refused, []string{"tiny-b:latest"}) {
		t.Fatalf("refused inference calls %v, want the tiny-b job's", refused)
	}
	a := tb.chat(t, "tiny-a", 2)
	var v *broker.QueueView
	eventually(t, 10*time.Second, "the view to hold both jobs", func() bool {
		var err error
		if v, err = w.QueueView(ctxT(t), time.Now()); err != nil {
			t.Fatal(err)
		}
		return len(v.Queued) == 2
	})
	if v.Queued[0].JobID != a.ID || v.Queued[1].JobID != b.ID {
		t.Errorf("queued %s then %s while the target is down, want the later tiny-a job %s first (the runner run last, drained first)",
			v.Queued[0].Model, v.Queued[1].Model, a.ID)
	}

	// Back as it was (tiny-a still loaded): the pick runs them in that order.
	tb.fake.SetDown(false)
	tb.waitState(t, a.ID, broker.StateDone)
	tb.waitState(t, b.ID, broker.StateDone)
	if got := answeredCalls(tb.fake); !slices.Equal(got[len(got)-2:], []string{"tiny-a:latest", "tiny-b:latest"}) {
		t.Errorf("answered inference calls %v, want tiny-a then tiny-b after the outage, as the view placed them", got)
	}
}

// TestQueueViewKeepsTheLastRunnerWhilePausedBeforeAJob: a worker that pauses at its
// probe before a pick (the polls say the target is down), having called nothing, also
// keeps the runner run last for the plan.
func TestQueueViewKeepsTheLastRunnerWhilePausedBeforeAJob(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := tb.polledInventory(t)
	w := tb.start(t, worker.Config{Inventory: inv})
	tb.waitState(t, tb.chat(t, "tiny-a", 1).ID, broker.StateDone)
	tb.goSilent(t, inv)
	b := tb.chat(t, "tiny-b", 1)
	eventually(t, 10*time.Second, "the worker paused for the target", func() bool {
		p := w.Paused() // its own pause: the view shows one as soon as the polls fail
		return p != nil && p.Reason == broker.PauseTargetUnreachable
	})
	a := tb.chat(t, "tiny-a", 2)
	var v *broker.QueueView
	eventually(t, 10*time.Second, "the view to hold both jobs", func() bool {
		var err error
		if v, err = w.QueueView(ctxT(t), time.Now()); err != nil {
			t.Fatal(err)
		}
		return len(v.Queued) == 2
	})
	if v.Queued[0].JobID != a.ID || v.Queued[1].JobID != b.ID {
		t.Errorf("queued %s then %s while paused, want the later tiny-a job %s first (the runner run last, drained first)",
			v.Queued[0].Model, v.Queued[1].Model, a.ID)
	}
	if n := len(refusedCalls(tb.fake)); n != 0 {
		t.Errorf("%d inference calls refused, want none: the worker probes before it takes a job", n)
	}
}

// refusedCalls is the model of every inference call the fake failed, in arrival order.
func refusedCalls(fake *ollamatest.Server) []string {
	var out []string
	for _, c := range fake.Calls() {
		if c.Model != "" && c.Path != "/api/show" && c.Failure != "" {
			out = append(out, c.Model)
		}
	}
	return out
}

// answeredCalls is the model of every inference call the fake did not fail, in arrival
// order.
func answeredCalls(fake *ollamatest.Server) []string {
	var out []string
	for _, c := range fake.Calls() {
		if c.Model != "" && c.Path != "/api/show" && c.Failure == "" {
			out = append(out, c.Model)
		}
	}
	return out
}

// A target whose polls are answered with an error for good (a proxy that passes only the
// model calls) while its model calls work: after one failed job the next pick reads
// /api/ps once, not at every pick from then on.
func TestAFailedJobCostsOnePsReadWhenThePollsFail(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	var polls atomic.Int32
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		polls.Add(1)
		http.Error(w, `{"error":"not passed on"}`, http.StatusNotFound)
	}))
	t.Cleanup(proxy.Close)
	pc, err := ollama.NewClient(ollama.ClientConfig{BaseURL: proxy.URL, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: pc, Logger: testLogger()})
	tb.start(t, worker.Config{Inventory: inv})
	tb.waitState(t, tb.chat(t, "tiny-a", 1).ID, broker.StateDone)
	tb.fake.FailNext(1, ollamatest.FailStatus(500, "runner crashed"))
	tb.waitState(t, tb.chat(t, "tiny-a", 1).ID, broker.StateFailed)
	before := polls.Load()
	for i := range 4 {
		tb.waitState(t, tb.chat(t, "tiny-a", i+2).ID, broker.StateDone)
	}
	if n := polls.Load() - before; n > 2 {
		t.Errorf("%d reads of the failing polls over 4 jobs after one failed, want at most the one that follows it", n)
	}
}

// Ollama restarted (empty) with no failure the worker met: no job's call failed, so
// nothing marks /api/ps due and a drain of one runner reads none. A poll after the last
// job's end that no longer lists the runner run last stands over it (loadedLocked): the
// view names nothing loaded, and the next job of that runner is recorded loading, not
// working. Before any poll sees the restart the worker cannot know without a read before
// every job, which a drain does not make.
func TestAPollThatMissesTheRunnerRunLastStandsOverIt(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := tb.polledInventory(t)
	w := tb.start(t, worker.Config{Inventory: inv})
	tb.waitState(t, tb.chat(t, "tiny-a", 1).ID, broker.StateDone)
	waitBetweenJobs(t, w) // the poll below comes after the run's end is booked
	tb.fake.SetLoaded("") // restarted between two polls: nothing loaded
	if err := inv.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Loaded) != 0 {
		t.Errorf("loaded %v after a poll listed none, want none", v.Loaded)
	}
	j := tb.chat(t, "tiny-a", 2)
	tb.waitState(t, j.ID, broker.StateDone)
	if got := statesOf(t, tb, j.ID); !slices.Contains(got, broker.StateLoading) {
		t.Errorf("states %v of the tiny-a job after a poll saw the target empty, want loading", got)
	}
}

// A chat with keep_alive 0 unloads its model as its call ends (Ollama expires a runner
// whose session is 0 once its request is over). The worker counted that model loaded, as
// the one whose model answered last: /queue's loaded named it, and the next job of it
// was recorded working, its load not counted, though the target loaded it again. And
// Ollama's unload request itself (a generate without a prompt) loads nothing, yet was
// recorded loading, and so counted as a load once answered.
func TestAKeepAliveZeroAnswerLeavesItsModelUnloaded(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := tb.polledInventory(t)
	w := tb.start(t, worker.Config{Inventory: inv})
	tb.waitState(t, tb.chat(t, "tiny-a", 1).ID, broker.StateDone)
	once := tb.submit(t, "tiny-a", broker.KindChat, `{"model":"tiny-a","messages":[{"role":"user","content":"once"}],"keep_alive":"0s"}`)
	tb.waitState(t, once.ID, broker.StateDone)
	eventually(t, 10*time.Second, "the target unloaded tiny-a", func() bool { return tb.fake.LoadedModel() == "" })
	waitBetweenJobs(t, w)
	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(v.Loaded, "tiny-a:latest") {
		t.Errorf("loaded %v after a tiny-a call with keep_alive 0, want tiny-a not among them", v.Loaded)
	}

	loads := tb.fake.Loads()
	next := tb.chat(t, "tiny-a", 2)
	tb.waitState(t, next.ID, broker.StateDone)
	if got := statesOf(t, tb, next.ID); !slices.Contains(got, broker.StateLoading) {
		t.Errorf("states %v of the tiny-a job after its model was unloaded, want loading", got)
	}
	if n := tb.fake.Loads(); n != loads+1 {
		t.Fatalf("fake loads %d, want %d: the job loaded tiny-a again", n, loads+1)
	}

	unload := tb.submit(t, "tiny-b", broker.KindGenerate, `{"model":"tiny-b","keep_alive":0}`)
	tb.waitState(t, unload.ID, broker.StateDone)
	if got := statesOf(t, tb, unload.ID); slices.Contains(got, broker.StateLoading) {
		t.Errorf("states %v of an unload request, want no loading: it loads nothing", got)
	}
	if n := tb.fake.Loads(); n != loads+1 {
		t.Errorf("fake loads %d after the unload request, want %d", n, loads+1)
	}
}

// The runner a keep_alive 0 answer left unloaded stays out of the loaded ones only while
// Ollama may still list it: once a poll after the job's end no longer lists it, a later
// poll that does has it loaded again (by another client), and the pick follows /api/ps.
func TestAModelUnloadedByKeepAliveZeroCountsOnceLoadedAgain(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := tb.polledInventory(t)
	w := tb.start(t, worker.Config{Inventory: inv})
	once := tb.submit(t, "tiny-a", broker.KindChat, `{"model":"tiny-a","messages":[{"role":"user","content":"once"}],"keep_alive":0}`)
	tb.waitState(t, once.ID, broker.StateDone)
	waitBetweenJobs(t, w)
	eventually(t, 10*time.Second, "a poll without tiny-a", func() bool {
		return inv.Refresh(ctxT(t)) == nil && len(inv.Loaded()) == 0
	})
	if _, err := w.QueueView(ctxT(t), time.Now()); err != nil {
		t.Fatal(err)
	}
	tb.fake.SetLoaded("tiny-a") // another client of the Mac loads it
	if err := inv.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v.Loaded, []string{"tiny-a:latest"}) {
		t.Errorf("loaded %v after a poll listed tiny-a again, want [tiny-a:latest]", v.Loaded)
	}
	j := tb.chat(t, "tiny-a", 2)
	tb.waitState(t, j.ID, broker.StateDone)
	if got := statesOf(t, tb, j.ID); slices.Contains(got, broker.StateLoading) {
		t.Errorf("states %v of a tiny-a job with tiny-a loaded, want no loading", got)
	}
}

// A call beside the jobs (an embedding the gateway sent straight to Ollama) may have
// loaded its model in place of the one run last: told so, the worker reads /api/ps before
// the next job of the model run last, which is recorded loading, its load counted; an
// idle worker begins no early call for it before that read.
func TestACallBesideTheJobsMakesTheNextPickReadWhatIsLoaded(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	inv := tb.polledInventory(t)
	w := tb.start(t, worker.Config{Inventory: inv, EarlyCall: true})
	first := tb.chat(t, "tiny-a", 1)
	tb.waitState(t, first.ID, broker.StateDone)
	waitBetweenJobs(t, w)
	if err := inv.Refresh(ctxT(t)); err != nil { // a poll after the job: tiny-a loaded
		t.Fatal(err)
	}

	tb.fake.SetLoaded("tiny-embed") // the embedding call swapped tiny-a out
	w.TargetUsedBeside()
	loads := tb.fake.Loads()
	next := tb.chat(t, "tiny-a", 2)
	tb.waitState(t, next.ID, broker.StateDone)
	if n := tb.fake.Loads(); n != loads+1 {
		t.Fatalf("fake loads %d, want %d: the job loaded tiny-a again", n, loads+1)
	}
	if got := statesOf(t, tb, next.ID); !slices.Contains(got, broker.StateLoading) {
		t.Errorf("states %v of the tiny-a job after a call beside it loaded another model, want loading", got)
	}

	// A call beside that left it loaded (the target keeps both) costs no load.
	waitBetweenJobs(t, w)
	w.TargetUsedBeside()
	again := tb.chat(t, "tiny-a", 3)
	tb.waitState(t, again.ID, broker.StateDone)
	if got := statesOf(t, tb, again.ID); slices.Contains(got, broker.StateLoading) {
		t.Errorf("states %v of a tiny-a job with tiny-a still loaded, want no loading", got)
	}
}
