package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// logLines collects a foreman's log for a test to read.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// startOnDir starts a foreman on its own embedded NATS in dir, in front of the Ollama at
// ollamaURL, logging to log when it is not nil. It shuts down when the test ends, if
// stopForeman has not stopped it before.
func startOnDir(t *testing.T, dir, ollamaURL string, log io.Writer) *app.App {
	t.Helper()
	if log == nil {
		log = io.Discard
	}
	cfg := app.Config{Addr: "127.0.0.1:0", DataDir: dir, OllamaURL: ollamaURL, TargetName: "studio", PollInterval: 200 * time.Millisecond}
	a, err := app.Start(context.Background(), cfg, slog.New(slog.NewTextHandler(log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopForeman(t, a) })
	return a
}

// stopForeman shuts a down in order, as a restart does.
func stopForeman(t *testing.T, a *app.App) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

// waitRemembered waits until the store holds models as target name's list.
func waitRemembered(t *testing.T, a *app.App, name string, models ...string) {
	t.Helper()
	eventually(t, 20*time.Second, "the model list stored", func() bool {
		k, ok, err := a.Store().RememberedModels(context.Background(), name)
		return err == nil && ok && slices.Equal(k.Models, models)
	})
}

// submitJob posts an async chat job for model through a and returns the status, the body
// and the job's id.
func submitJob(t *testing.T, a *app.App, model string) (int, string, string) {
	t.Helper()
	code, b := call(t, a, http.MethodPost, "/jobs", `{"kind":"chat","model":"`+model+`","messages":[{"role":"user","content":"batch"}]}`)
	var job struct {
		ID string `json:"job_id"`
	}
	_ = json.Unmarshal(b, &job)
	return code, string(b), job.ID
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string { return ollamatest.ClosedAddr(t) }

const unknownWhileDown = `is not in its last known model list`

// The case the remembered list is for: foreman restarts (a power cut) while its Mac is
// still down. The models the Mac had before are queued for, async and sync alike, and
// run once it is back; the target does not look reachable meanwhile, and a model it did
// not have is still refused.
func TestRestartWhileTargetDownQueuesItsModels(t *testing.T) {
	t.Parallel()
	mac := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	dir := t.TempDir()
	first := startOnDir(t, dir, mac.URL, nil)
	waitRemembered(t, first, "studio", "alpha:latest")
	stopForeman(t, first)

	mac.SetDown(true)
	var logs logLines
	a := startOnDir(t, dir, mac.URL, &logs)
	eventually(t, 20*time.Second, "a failed poll", func() bool { return a.Inventory().Degraded() })

	code, body, id := submitJob(t, a, "alpha")
	if code != http.StatusAccepted || id == "" {
		t.Fatalf("/jobs for a model the Mac had, after a restart while it is down: %d %s", code, body)
	}
	if code, body, _ := submitJob(t, a, "beta"); code != http.StatusBadGateway || !strings.Contains(body, unknownWhileDown) {
		t.Errorf("/jobs for a model the Mac never had: %d %s, want 502", code, body)
	}

	// A sync call is queued too and answered once the Mac is back.
	type answer struct {
		code int
		body string
		err  error
	}
	synced := make(chan answer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+a.Addr()+"/api/chat",
			strings.NewReader(`{"model":"alpha","messages":[{"role":"user","content":"now"}],"stream":false}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			synced <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		synced <- answer{resp.StatusCode, string(b), err}
	}()
	eventually(t, 20*time.Second, "the sync call queued", func() bool {
		jobs, _, err := a.Store().List(context.Background(), broker.ListOptions{Model: "alpha:latest"})
		return err == nil && slices.ContainsFunc(jobs, func(j *broker.Job) bool { return j.Sync && !j.State.Terminal() })
	})

	// Nothing says the Mac is up.
	if j, _, err := a.Store().Get(context.Background(), id); err != nil || j.State.Terminal() {
		t.Fatalf("the job while the Mac is down: %+v, %v", j, err)
	}
	_, h := call(t, a, http.MethodGet, "/healthz", "")
	var health struct {
		Status string `json:"status"`
		Target struct {
			Reachable bool `json:"reachable"`
		} `json:"target"`
		targetsBody
	}
	if err := json.Unmarshal(h, &health); err != nil || health.Status != "degraded" || health.Target.Reachable ||
		len(health.Targets) != 1 || health.Targets[0].Reachable {
		t.Errorf("/healthz while the Mac is down: %s", h)
	}
	if code, b := call(t, a, http.MethodGet, "/api/tags", ""); code != http.StatusBadGateway {
		t.Errorf("/api/tags while the Mac is down and never polled: %d %s, want 502", code, b)
	}
	if code, b := call(t, a, http.MethodGet, "/metrics", ""); code != http.StatusOK || !strings.Contains(string(b), "\nforeman_target_up 0\n") {
		t.Errorf("/metrics while the Mac is down: %d, want foreman_target_up 0", code)
	}
	if !strings.Contains(logs.String(), "remembered model list stands until the target answers a poll") {
		t.Errorf("no log line tells the remembered list is used:\n%s", logs.String())
	}

	mac.SetDown(false)
	waitJob(t, a.Store(), id)
	select {
	case got := <-synced:
		if got.err != nil || got.code != http.StatusOK || !strings.Contains(got.body, `"done":true`) {
			t.Fatalf("sync call: %d %s %v", got.code, got.body, got.err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the sync call was not answered once the Mac was back")
	}
}

// The Mac's aliases are remembered with its models (ADR-0068): after a restart while it
// is down, a call naming an alias (Claude Code's model names, by the prefix alias
// `ollama launch claude` sets) is queued under the alias's model and runs once the Mac is
// back, as a call naming the model is; a name no alias covers is still refused, and an
// alias of a model the Mac no longer listed is refused naming both.
func TestRestartWhileTargetDownQueuesByItsAliases(t *testing.T) {
	t.Parallel()
	mac := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	mac.SetAlias(ollama.Alias{Alias: "claude-sonnet-", Target: "alpha", PrefixMatching: true})
	mac.SetAlias(ollama.Alias{Alias: "fast", Target: "beta"}) // beta deleted since
	dir := t.TempDir()
	first := startOnDir(t, dir, mac.URL, nil)
	eventually(t, 20*time.Second, "the aliases stored", func() bool {
		k, ok, err := first.Store().RememberedModels(context.Background(), "studio")
		return err == nil && ok && len(k.Aliases) == 2
	})
	stopForeman(t, first)

	mac.SetDown(true)
	a := startOnDir(t, dir, mac.URL, nil)
	eventually(t, 20*time.Second, "a failed poll", func() bool { return a.Inventory().Degraded() })
	code, body, id := submitJob(t, a, "claude-sonnet-4-5")
	if code != http.StatusAccepted || id == "" {
		t.Fatalf("/jobs naming an alias the Mac had, after a restart while it is down: %d %s", code, body)
	}
	if j, _, err := a.Store().Get(context.Background(), id); err != nil || j.Model != "alpha:latest" {
		t.Fatalf("the aliased job: %+v, %v; want it queued under alpha:latest", j, err)
	}
	if code, body, _ := submitJob(t, a, "claude-opus-4"); code != http.StatusBadGateway || !strings.Contains(body, unknownWhileDown) {
		t.Errorf("/jobs for a name no alias covers: %d %s, want 502", code, body)
	}
	code, body, _ = submitJob(t, a, "fast")
	var refusal struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &refusal); code != http.StatusBadGateway || err != nil ||
		!strings.Contains(refusal.Error, `model "fast" (an alias of "beta:latest") `+unknownWhileDown) {
		t.Errorf("/jobs for an alias of a model not listed: %d %s, want 502 naming the alias and its model", code, body)
	}
	mac.SetDown(false)
	if j := waitJob(t, a.Store(), id); j.State != broker.StateDone {
		t.Fatalf("the aliased job once the Mac is back: %s %q", j.State, j.Error)
	}
}

// A foreman started on another Ollama (FOREMAN_OLLAMA_URL changed), or on a store whose
// entry cannot be read, does not use the list: a job for the model is refused as before.
func TestRememberedModelsNotUsedForAnotherURLOrACorruptEntry(t *testing.T) {
	t.Parallel()
	t.Run("another URL", func(t *testing.T) {
		t.Parallel()
		mac := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
		dir := t.TempDir()
		first := startOnDir(t, dir, mac.URL, nil)
		waitRemembered(t, first, "studio", "alpha:latest")
		stopForeman(t, first)

		var logs logLines
		a := startOnDir(t, dir, "http://"+closedAddr(t), &logs)
		if code, body, _ := submitJob(t, a, "alpha"); code != http.StatusBadGateway || !strings.Contains(body, unknownWhileDown) {
			t.Fatalf("/jobs for the other Ollama's model: %d %s, want 502", code, body)
		}
		if !strings.Contains(logs.String(), "remembered model list is of another target URL; not used") {
			t.Errorf("no log line tells why the list is not used:\n%s", logs.String())
		}
		// Credentials in the URL are not part of it: the same Ollama with a password is the
		// same target.
		stopForeman(t, a)
		mac.SetDown(true)
		withUser := strings.Replace(mac.URL, "://", "://user:secret@", 1)
		b := startOnDir(t, dir, withUser, nil)
		if code, body, _ := submitJob(t, b, "alpha"); code != http.StatusAccepted {
			t.Fatalf("/jobs with the same URL and credentials added: %d %s, want 202", code, body)
		}
	})
	t.Run("corrupt entry", func(t *testing.T) {
		t.Parallel()
		mac := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
		dir := t.TempDir()
		first := startOnDir(t, dir, mac.URL, nil)
		waitRemembered(t, first, "studio", "alpha:latest")
		js, err := jetstream.New(first.Conn())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		kv, err := js.KeyValue(ctx, broker.KnownModelsBucket)
		if err != nil {
			t.Fatal(err)
		}
		// The list the poll wrote, cut short: no later poll writes it again, the list
		// being unchanged.
		if _, err := kv.Put(ctx, "target.studio", []byte(`{"v":1,"name":"studio","models":["alpha:lat`)); err != nil {
			t.Fatal(err)
		}
		stopForeman(t, first)

		mac.SetDown(true)
		var logs logLines
		a := startOnDir(t, dir, mac.URL, &logs)
		if code, body, _ := submitJob(t, a, "alpha"); code != http.StatusBadGateway || !strings.Contains(body, unknownWhileDown) {
			t.Fatalf("/jobs with a corrupt list stored: %d %s, want 502", code, body)
		}
		if !strings.Contains(logs.String(), "remembered model list not used") {
			t.Errorf("the corrupt entry is not logged:\n%s", logs.String())
		}
		// Once the Mac answers, its list is stored over the corrupt one.
		mac.SetDown(false)
		waitRemembered(t, a, "studio", "alpha:latest")
	})
}

// Several Macs: a foreman restarted while its Mac is down publishes the remembered models
// with the Mac unreachable, so the other foreman queues jobs for them as this one does;
// they run on their own Mac once it is back, never on the other. A model the other Mac
// has too is shown from there meanwhile, the remembered listing notwithstanding.
func TestSeveralMacsRestartWhileMacDownSharesRememberedModels(t *testing.T) {
	t.Parallel()
	macA := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}, ollamatest.Model{Name: "shared:latest"}))
	macB := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "beta:latest"}, ollamatest.Model{Name: "shared:latest"}))
	nurl := sharedNATS(t)
	fa := startForeman(t, nurl, "mac-a", macA.URL)
	fb := startForeman(t, nurl, "mac-b", macB.URL)
	waitTargets(t, fa, 2)
	waitTargets(t, fb, 2)
	waitRemembered(t, fa, "mac-a", "alpha:latest", "shared:latest")
	stopForeman(t, fa)

	macA.SetDown(true)
	fa = startForeman(t, nurl, "mac-a", macA.URL)
	// Unreachable: the entry of the foreman before its restart (reachable) may still be
	// what mac-b's store read last.
	eventually(t, 20*time.Second, "mac-b sees mac-a's entry again, unreachable", func() bool {
		all, err := fb.Store().Targets(context.Background())
		return err == nil && slices.ContainsFunc(all, func(tg broker.Target) bool {
			return tg.Name == "mac-a" && !tg.Reachable && tg.HasModel("alpha:latest")
		})
	})
	var ids []string
	for _, via := range []*app.App{fa, fb} {
		code, body, id := submitJob(t, via, "alpha")
		if code != http.StatusAccepted {
			t.Fatalf("/jobs for mac-a's model after its foreman restarted while it is down: %d %s", code, body)
		}
		ids = append(ids, id)
	}
	_, q := call(t, fb, http.MethodGet, "/queue", "")
	var view targetsBody
	_ = json.Unmarshal(q, &view)
	listed := false
	for _, tg := range view.Targets {
		listed = listed || tg.Name == "mac-a" && !tg.Reachable && slices.Contains(tg.Models, "alpha:latest")
	}
	if !listed {
		t.Errorf("mac-b's /queue: mac-a not listed unreachable with its remembered models: %s", q)
	}
	if code, b := call(t, fa, http.MethodPost, "/api/show", `{"model":"shared"}`); code != http.StatusOK {
		t.Errorf("/api/show of a model mac-b has too, via mac-a's foreman: %d %s", code, b)
	}

	macA.SetDown(false)
	for _, id := range ids {
		waitJob(t, fa.Store(), id)
	}
	ownModelsOnly(t, "mac-b", macB, "beta:latest", "shared:latest")
}
