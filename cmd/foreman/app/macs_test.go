package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// sharedNATS starts a plain in-process nats-server with JetStream, as a NATS several
// foremen share, and returns its URL.
func sharedNATS(t *testing.T) string {
	t.Helper()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(srv.Shutdown)
	return srv.ClientURL()
}

// startForeman starts a foreman on natsURL in front of the Ollama at ollamaURL, named name,
// its configuration changed by adjust.
func startForeman(t *testing.T, natsURL, name, ollamaURL string, adjust ...func(*app.Config)) *app.App {
	t.Helper()
	cfg := app.Config{
		Addr: "127.0.0.1:0", OllamaURL: ollamaURL, NATSURL: natsURL, NATSReplicas: 1,
		TargetName: name, PollInterval: 200 * time.Millisecond,
	}
	for _, f := range adjust {
		f(&cfg)
	}
	a, err := app.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.Shutdown(ctx)
	})
	return a
}

func call(t *testing.T, a *app.App, method, path, body string) (int, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+a.Addr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

type targetsBody struct {
	Targets []struct {
		Name      string   `json:"name"`
		Reachable bool     `json:"reachable"`
		Loaded    []string `json:"loaded"`
		Models    []string `json:"models"`
	} `json:"targets"`
}

// waitTargets waits until a's /healthz shows n reachable targets.
func waitTargets(t *testing.T, a *app.App, n int) {
	t.Helper()
	eventually(t, 15*time.Second, fmt.Sprintf("/healthz shows %d reachable targets", n), func() bool {
		_, b := call(t, a, http.MethodGet, "/healthz", "")
		var h targetsBody
		_ = json.Unmarshal(b, &h)
		up := 0
		for _, tg := range h.Targets {
			if tg.Reachable {
				up++
			}
		}
		return up == n
	})
}

// alphaBeta starts two foremen on one NATS, mac-a in front of an Ollama with alpha and
// mac-b in front of one with beta, each configuration changed by its adjust (nil for
// none), and waits until each sees both Macs reachable.
func alphaBeta(t *testing.T, adjustA, adjustB func(*app.Config)) (macA, macB *ollamatest.Server, fa, fb *app.App) {
	t.Helper()
	macA = ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	macB = ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "beta:latest"}))
	nurl := sharedNATS(t)
	var adjA, adjB []func(*app.Config)
	if adjustA != nil {
		adjA = append(adjA, adjustA)
	}
	if adjustB != nil {
		adjB = append(adjB, adjustB)
	}
	fa = startForeman(t, nurl, "mac-a", macA.URL, adjA...)
	fb = startForeman(t, nurl, "mac-b", macB.URL, adjB...)
	waitTargets(t, fa, 2)
	waitTargets(t, fb, 2)
	return macA, macB, fa, fb
}

// ownModelsOnly fails t if target saw a request naming a model outside own.
func ownModelsOnly(t *testing.T, name string, target *ollamatest.Server, own ...string) {
	t.Helper()
	for _, c := range target.Calls() {
		if c.Model != "" && !slices.Contains(own, c.Model) {
			t.Errorf("target %s got %s for %s, which it does not have", name, c.Path, c.Model)
		}
	}
}

// Two foremen on one NATS, each in front of a Mac with different models: either takes
// any model, each model runs on (and each metadata or embedding request goes to) the
// Mac that has it, the lists are the union, and a model neither has is Ollama's 404.
func TestSeveralMacsRouteByModel(t *testing.T) {
	macA := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}, ollamatest.Model{Name: "embed-a:latest", Embedding: true}))
	macB := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "beta:latest"}, ollamatest.Model{Name: "embed-b:latest", Embedding: true}))
	nurl := sharedNATS(t)
	fa := startForeman(t, nurl, "mac-a", macA.URL)
	fb := startForeman(t, nurl, "mac-b", macB.URL)
	waitTargets(t, fa, 2)
	waitTargets(t, fb, 2)

	for _, c := range []struct {
		via        *app.App
		path, body string
	}{
		{fa, "/api/chat", `{"model":"beta","messages":[{"role":"user","content":"hi"}],"stream":false}`},
		{fb, "/api/generate", `{"model":"alpha","prompt":"hi","stream":false}`},
		{fa, "/v1/chat/completions", `{"model":"beta","messages":[{"role":"user","content":"hi"}]}`},
		{fa, "/api/show", `{"model":"beta"}`},
		{fb, "/api/show", `{"model":"alpha"}`},
		{fa, "/api/embed", `{"model":"embed-b","input":"x"}`},
		{fb, "/api/embeddings", `{"model":"embed-a","prompt":"x"}`},
		{fa, "/v1/embeddings", `{"model":"embed-b","input":"x"}`},
		{fa, "/api/embed", `{"model":"embed-a","input":"x"}`},
	} {
		if code, b := call(t, c.via, http.MethodPost, c.path, c.body); code != http.StatusOK {
			t.Errorf("%s %s: %d %s", c.path, c.body, code, b)
		}
	}
	if code, b := call(t, fa, http.MethodGet, "/v1/models/beta", ""); code != http.StatusOK {
		t.Errorf("GET /v1/models/beta via mac-a: %d %s", code, b)
	}
	// A job submitted through /jobs for the other Mac's model runs there too.
	code, b := call(t, fa, http.MethodPost, "/jobs", `{"kind":"chat","model":"beta","messages":[{"role":"user","content":"later"}]}`)
	if code != http.StatusAccepted && code != http.StatusOK {
		t.Fatalf("/jobs for beta via mac-a: %d %s", code, b)
	}
	var job struct {
		ID string `json:"job_id"`
	}
	_ = json.Unmarshal(b, &job)
	waitJob(t, fa.Store(), job.ID)

	code, b = call(t, fb, http.MethodPost, "/api/chat", `{"model":"gamma","messages":[{"role":"user","content":"hi"}]}`)
	if code != http.StatusNotFound || !bytes.Contains(b, []byte(`model 'gamma' not found`)) {
		t.Errorf("model no Mac has: %d %s", code, b)
	}

	for _, a := range []*app.App{fa, fb} {
		_, b := call(t, a, http.MethodGet, "/api/tags", "")
		var tags ollama.ListResponse
		if err := json.Unmarshal(b, &tags); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, m := range tags.Models {
			names = append(names, m.Name)
		}
		slices.Sort(names)
		if want := []string{"alpha:latest", "beta:latest", "embed-a:latest", "embed-b:latest"}; !slices.Equal(names, want) {
			t.Errorf("/api/tags: %v, want %v", names, want)
		}
		_, b = call(t, a, http.MethodGet, "/v1/models", "")
		var oai struct {
			Data []struct {
				ID      string `json:"id"`
				OwnedBy string `json:"owned_by"`
			} `json:"data"`
		}
		_ = json.Unmarshal(b, &oai)
		var ids []string
		for _, m := range oai.Data {
			ids = append(ids, m.ID)
		}
		slices.Sort(ids)
		if want := []string{"alpha:latest", "beta:latest", "embed-a:latest", "embed-b:latest"}; !slices.Equal(ids, want) {
			t.Errorf("/v1/models: %v, want %v (%s)", ids, want, b)
		}
		if a == fa {
			// The own Mac's list cut short is no list: not a part passed for the whole.
			macA.FailNextOn("/v1/models", 1, ollamatest.DropMidStream)
			if code, b := call(t, a, http.MethodGet, "/v1/models", ""); code != http.StatusBadGateway || !bytes.Contains(b, []byte("cut short")) {
				t.Errorf("/v1/models with the own list cut short: %d %s, want 502", code, b)
			}
		}
		_, b = call(t, a, http.MethodGet, "/queue", "")
		var q targetsBody
		_ = json.Unmarshal(b, &q)
		if len(q.Targets) != 2 || q.Targets[0].Name == q.Targets[1].Name {
			t.Errorf("/queue targets: %s", b)
		}
	}
	// Each Mac loaded its own chat model; /api/ps through either lists both, once each,
	// as soon as the other foreman's next poll published it.
	eventually(t, 10*time.Second, "/api/ps via mac-a lists alpha and beta", func() bool {
		_, b = call(t, fa, http.MethodGet, "/api/ps", "")
		var ps ollama.ProcessResponse
		_ = json.Unmarshal(b, &ps)
		var loaded []string
		for _, m := range ps.Models {
			loaded = append(loaded, m.Name)
		}
		slices.Sort(loaded)
		return slices.Equal(loaded, []string{"alpha:latest", "beta:latest"})
	})
	ownModelsOnly(t, "mac-a", macA, "alpha:latest", "embed-a:latest")
	ownModelsOnly(t, "mac-b", macB, "beta:latest", "embed-b:latest")
}

// waitJob waits for job id to end and fails t unless it is done.
func waitJob(t *testing.T, s *broker.Store, id string) *broker.Job {
	t.Helper()
	var j *broker.Job
	eventually(t, 20*time.Second, "job "+id+" ended", func() bool {
		got, _, err := s.Get(context.Background(), id)
		if err != nil || !got.State.Terminal() {
			return false
		}
		if got.State != broker.StateDone {
			t.Fatalf("job %s (%s) ended %s: %s", id, got.Model, got.State, got.Error)
		}
		j = got
		return true
	})
	return j
}

// Two Macs that both have A and B, one with A loaded and one with B, drain an A/B
// backlog side by side: each keeps its own model, so the pair loads no more models than
// one Mac alone would (one swap) while each runs about half the jobs.
func TestSeveralMacsShareBacklog(t *testing.T) {
	models := ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}, ollamatest.Model{Name: "beta:latest"})
	macA := ollamatest.New(t, models, ollamatest.WithLoadDelay(300*time.Millisecond), ollamatest.WithTokenDelay(5*time.Millisecond))
	macB := ollamatest.New(t, models, ollamatest.WithLoadDelay(300*time.Millisecond), ollamatest.WithTokenDelay(5*time.Millisecond))
	macA.SetLoaded("alpha")
	macB.SetLoaded("beta")
	nurl := sharedNATS(t)

	// The backlog is queued before either foreman runs.
	const perModel = 6
	nc, err := nats.Connect(nurl, nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	s, err := broker.Open(context.Background(), broker.Config{Conn: nc, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range perModel {
		for _, m := range []string{"alpha", "beta"} {
			j, err := s.Submit(context.Background(), &broker.Job{Model: m, Kind: broker.KindChat},
				fmt.Appendf(nil, `{"model":%q,"messages":[{"role":"user","content":"q%d"}]}`, m, i))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, j.ID)
		}
	}
	// Each Mac's first job waits until both foremen run: one that started alone would
	// rightly take the other model's jobs while nobody else can (a slow start-up under a
	// loaded machine did), and the test is of sharing, not of start-up order.
	releaseA, releaseB := macA.Hold("alpha"), macB.Hold("beta")
	start := time.Now()
	startForeman(t, nurl, "mac-a", macA.URL)
	startForeman(t, nurl, "mac-b", macB.URL)
	wctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := macA.WaitStarted(wctx, "alpha", 1); err != nil {
		t.Fatal(err)
	}
	if err := macB.WaitStarted(wctx, "beta", 1); err != nil {
		t.Fatal(err)
	}
	releaseA()
	releaseB()
	for _, id := range ids {
		waitJob(t, s, id)
	}
	t.Logf("%d jobs on two Macs in %s", len(ids), time.Since(start)) // for the record, not asserted
	ran := func(target *ollamatest.Server, model string) int {
		n := 0
		for _, c := range target.Calls() {
			if c.Path == "/api/chat" && c.Model == model {
				n++
			}
		}
		return n
	}
	a, b := ran(macA, "alpha:latest"), ran(macB, "beta:latest")
	t.Logf("mac-a ran %d alpha, %d beta, %d loads; mac-b ran %d beta, %d alpha, %d loads",
		a, ran(macA, "beta:latest"), macA.Loads(), b, ran(macB, "alpha:latest"), macB.Loads())
	if loads := macA.Loads() + macB.Loads(); loads > 1 {
		t.Errorf("%d loads, one Mac alone needs 1", loads)
	}
	if a < perModel-1 || b < perModel-1 {
		t.Errorf("each Mac should drain its loaded model: mac-a ran %d alpha, mac-b %d beta of %d", a, b, perModel)
	}
}

// A job for a model whose only Mac is down is accepted through the other foreman and
// waits; it runs on its Mac when that Mac is back, never on the other.
func TestSeveralMacsModelOnDownMacWaits(t *testing.T) {
	macA, macB, fa, _ := alphaBeta(t, nil, nil)
	macB.SetDown(true)
	waitTargets(t, fa, 1) // mac-b's foreman published its Mac unreachable

	code, b := call(t, fa, http.MethodPost, "/jobs", `{"kind":"chat","model":"beta","messages":[{"role":"user","content":"later"}]}`)
	if code != http.StatusAccepted && code != http.StatusOK {
		t.Fatalf("/jobs for the down Mac's model: %d %s", code, b)
	}
	var job struct {
		ID string `json:"job_id"`
	}
	_ = json.Unmarshal(b, &job)
	// While mac-b is down the job does not end, and mac-a does not take it: a job for
	// alpha submitted after it runs on mac-a in the meantime.
	code, b = call(t, fa, http.MethodPost, "/api/chat", `{"model":"alpha","messages":[{"role":"user","content":"now"}],"stream":false}`)
	if code != http.StatusOK {
		t.Fatalf("alpha meanwhile: %d %s", code, b)
	}
	if j, _, err := fa.Store().Get(context.Background(), job.ID); err != nil || j.State.Terminal() {
		t.Fatalf("beta's job while its Mac is down: %+v, %v", j, err)
	}
	// mac-a's foreman gives it no place in its own plan (ADR-0073).
	if code, b := call(t, fa, http.MethodGet, "/jobs/"+job.ID, ""); code != http.StatusOK ||
		!strings.Contains(string(b), `"waiting_elsewhere":true`) || strings.Contains(string(b), `"queue_position"`) {
		t.Errorf("GET /jobs/%s through mac-a's foreman: %d %s; want waiting_elsewhere, no position", job.ID, code, b)
	}
	macB.SetDown(false)
	waitJob(t, fa.Store(), job.ID)
	ownModelsOnly(t, "mac-a", macA, "alpha:latest")
	ownModelsOnly(t, "mac-b", macB, "beta:latest")
}

// A foreman that stops (a restart, an upgrade) takes its Mac's models with it for a
// while, but not the jobs queued for them: the other foreman, alone now, does not run a
// model its own Mac lacks (it would fail there), and the job waits until its Mac's
// foreman is back.
func TestSeveralMacsStoppedForemanLeavesItsJobsQueued(t *testing.T) {
	macA := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	macB := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "beta:latest"}))
	nurl := sharedNATS(t)
	fa := startForeman(t, nurl, "mac-a", macA.URL)
	fb := startForeman(t, nurl, "mac-b", macB.URL)
	waitTargets(t, fa, 2)
	waitTargets(t, fb, 2)
	macB.SetDown(true) // so that the job waits while mac-b's foreman still runs
	waitTargets(t, fa, 1)
	code, b := call(t, fa, http.MethodPost, "/jobs", `{"kind":"chat","model":"beta","messages":[{"role":"user","content":"later"}]}`)
	if code != http.StatusAccepted {
		t.Fatalf("/jobs for beta: %d %s", code, b)
	}
	var job struct {
		ID string `json:"job_id"`
	}
	_ = json.Unmarshal(b, &job)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stopAt := time.Now()
	if err := fb.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// Stopped in order, mac-b's foreman left its entry unreachable (ADR-0075): a job for
	// its model is still taken, to run once it is back, not Ollama's 404. (mac-a reads
	// the entries again once its cached read is a second old.)
	var entry *broker.Target
	eventually(t, 15*time.Second, "mac-a reading the entries after mac-b's stop", func() bool {
		all, err := fa.Store().Targets(context.Background())
		if err != nil {
			return false
		}
		i := slices.IndexFunc(all, func(t broker.Target) bool { return t.Name == "mac-b" })
		if i < 0 {
			entry = nil
			return true // withdrawn
		}
		entry = &all[i]
		return entry.Updated.After(stopAt)
	})
	if entry == nil || entry.Reachable || !entry.HasModel("beta:latest") {
		t.Fatalf("mac-b's entry after its foreman stopped: %+v, want it there, unreachable, with its models", entry)
	}
	code, b = call(t, fa, http.MethodPost, "/jobs", `{"kind":"chat","model":"beta","messages":[{"role":"user","content":"during the restart"}]}`)
	if code != http.StatusAccepted {
		t.Fatalf("/jobs for beta while mac-b's foreman is stopped: %d %s", code, b)
	}
	var second struct {
		ID string `json:"job_id"`
	}
	_ = json.Unmarshal(b, &second)
	eventually(t, 15*time.Second, "mac-b's entry lapsed", func() bool {
		all, err := fa.Store().Targets(context.Background())
		return err == nil && len(all) == 1
	})
	// mac-a's worker, alone, picks after the beta job was left: an alpha chat runs.
	code, b = call(t, fa, http.MethodPost, "/api/chat", `{"model":"alpha","messages":[{"role":"user","content":"now"}],"stream":false}`)
	if code != http.StatusOK {
		t.Fatalf("alpha meanwhile: %d %s", code, b)
	}
	if j, _, err := fa.Store().Get(context.Background(), job.ID); err != nil || j.State.Terminal() {
		t.Fatalf("beta's job while its foreman is stopped: %+v, %v", j, err)
	}
	macB.SetDown(false)
	startForeman(t, nurl, "mac-b", macB.URL)
	waitJob(t, fa.Store(), job.ID)
	waitJob(t, fa.Store(), second.ID)
	ownModelsOnly(t, "mac-a", macA, "alpha:latest")
}

// While one Mac is down, the jobs for a model both Macs have run on the other one.
func TestSeveralMacsDownMacLeavesSharedModels(t *testing.T) {
	models := ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"})
	macA, macB := ollamatest.New(t, models), ollamatest.New(t, models)
	nurl := sharedNATS(t)
	fa := startForeman(t, nurl, "mac-a", macA.URL)
	fb := startForeman(t, nurl, "mac-b", macB.URL)
	waitTargets(t, fa, 2)
	waitTargets(t, fb, 2)
	macA.SetDown(true)
	waitTargets(t, fa, 1)
	waitTargets(t, fb, 1)
	for i := range 4 {
		code, b := call(t, fa, http.MethodPost, "/api/chat", fmt.Sprintf(`{"model":"alpha","messages":[{"role":"user","content":"q%d"}],"stream":false}`, i))
		if code != http.StatusOK {
			t.Fatalf("chat %d while mac-a is down: %d %s", i, code, b)
		}
	}
	for _, c := range macA.Calls() {
		if c.Path == "/api/chat" {
			t.Errorf("mac-a, down, was given a chat")
		}
	}
}

// eventually checks cond at once and then every 10ms until it holds; it fails t with
// what if within passes first. cond runs on the test's goroutine and may call t.Fatal.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(within)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("%s: not within %v", what, within)
		}
	}
}

// allowLoopbackWebhooks opens loopback to webhooks: the fake Macs listen there, so only
// the protection of the targets stands between a webhook and them.
func allowLoopbackWebhooks(c *app.Config) {
	c.WebhookAllowNets = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
}

// firstDelivery submits a job through a whose state webhook goes to hook, and returns the
// first attempt its delivery log shows, and the job's id; meanwhile, when set, runs at
// each look.
func firstDelivery(t *testing.T, a *app.App, hook string, meanwhile func()) (string, broker.DeliveryAttempt) {
	t.Helper()
	code, b := call(t, a, http.MethodPost, "/jobs", `{"model":"alpha","messages":[{"role":"user","content":"hi"}],`+
		`"state_webhook_url":"`+hook+`","webhook_events":["queued"]}`)
	if code != http.StatusAccepted {
		t.Fatalf("/jobs: %d %s", code, b)
	}
	var job struct {
		ID string `json:"job_id"`
	}
	_ = json.Unmarshal(b, &job)
	var log []broker.DeliveryAttempt
	eventually(t, 20*time.Second, "the webhook was tried", func() bool {
		if meanwhile != nil {
			meanwhile()
		}
		log, _ = a.Store().Deliveries(context.Background(), job.ID)
		return len(log) > 0
	})
	return job.ID, log[0]
}

// withdraw removes target name's entry, as its foreman does when it stops in order, and
// waits until a no longer lists it. It deletes the key in the bucket itself: a store
// withdraws only an entry it wrote (ADR-0056), and name's may be another foreman's.
func withdraw(t *testing.T, a *app.App, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := jetstream.New(a.Conn())
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, broker.TargetsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "target."+name); err != nil { // the key of a name of letters, digits and '-'
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, name+"'s entry withdrawn", func() bool {
		all, err := a.Store().Targets(ctx)
		return err == nil && !slices.ContainsFunc(all, func(tg broker.Target) bool { return tg.Name == name })
	})
}

// A foreman refuses webhooks to every Mac's Ollama, the other foremen's too: a state
// event names a model, and POSTed to another Mac's /api/generate it would load that
// model outside the queue. mac-b's entry is published as its foreman would (kept fresh
// while the test waits): one dispatcher, so one attempt.
func TestSeveralMacsWebhookSparesOtherTargets(t *testing.T) {
	macA := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	macB := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "beta:latest"}))
	fa := startForeman(t, sharedNATS(t), "mac-a", macA.URL, allowLoopbackWebhooks)
	publishB := func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := fa.Store().PublishTarget(ctx, broker.Target{Name: "mac-b", URL: macB.URL, Reachable: true, Models: []string{"beta:latest"}}); err != nil {
			t.Fatal(err)
		}
	}
	publishB()
	waitTargets(t, fa, 2)

	// mac-a's own target is refused at submit; mac-b's when foreman connects.
	id, a := firstDelivery(t, fa, macB.URL+"/api/generate", publishB)
	if a.Outcome != broker.OutcomeRefused || !strings.Contains(a.Error, "another foreman") {
		t.Errorf("webhook to mac-b's /api/generate: %+v, want refused", a)
	}
	waitJob(t, fa.Store(), id)

	// mac-b's foreman restarts: its entry is withdrawn, its Mac's Ollama is there still.
	withdraw(t, fa, "mac-b")
	id, a = firstDelivery(t, fa, macB.URL+"/api/generate", nil)
	if a.Outcome != broker.OutcomeRefused {
		t.Errorf("webhook to mac-b's /api/generate while its foreman restarts: %+v, want refused", a)
	}
	waitJob(t, fa.Store(), id)
	for _, c := range macB.Calls() {
		if c.Path == "/api/generate" {
			t.Errorf("mac-b got a webhook on /api/generate")
		}
	}
}

// A Mac seen only by the inventory polls (no webhook sent while its entry was live) is
// protected too once its foreman restarts and its entry is gone.
func TestSeveralMacsWebhookSparesARestartingMacSeenByPolls(t *testing.T) {
	macA := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	macB := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "beta:latest"}))
	fa := startForeman(t, sharedNATS(t), "mac-a", macA.URL, allowLoopbackWebhooks)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := fa.Store().PublishTarget(ctx, broker.Target{Name: "mac-b", URL: macB.URL, Reachable: true, Models: []string{"beta:latest"}}); err != nil {
		t.Fatal(err)
	}
	published := time.Now()
	// mac-a's own entry refreshed after mac-b's was written: a poll has read the bucket
	// since (each poll publishes, then reads the others; the reads cache for a second).
	eventually(t, 15*time.Second, "mac-a polled after mac-b was published", func() bool {
		all, err := fa.Store().Targets(ctx)
		return err == nil && slices.ContainsFunc(all, func(tg broker.Target) bool {
			return tg.Name == "mac-a" && tg.Updated.After(published.Add(1500*time.Millisecond))
		})
	})
	withdraw(t, fa, "mac-b")
	if _, a := firstDelivery(t, fa, macB.URL+"/api/generate", nil); a.Outcome != broker.OutcomeRefused {
		t.Errorf("webhook to the restarting mac-b's /api/generate: %+v, want refused", a)
	}
}

// A chat for a model whose only Mac is down waits for it through another foreman no
// longer than FOREMAN_SYNC_OUTAGE_WAIT: then its job is canceled and the caller gets 502.
// The other foreman's own target is up; its worker is not paused. (A job for it through
// /jobs waits, TestSeveralMacsModelOnDownMacWaits.)
func TestSeveralMacsSyncCallGivesUpOnADownMac(t *testing.T) {
	_, macB, fa, _ := alphaBeta(t, func(c *app.Config) { c.SyncOutageWait = time.Second }, nil)
	macB.SetDown(true)
	waitTargets(t, fa, 1) // mac-b's foreman published its Mac unreachable

	code, b := call(t, fa, http.MethodPost, "/api/chat", `{"model":"beta","messages":[{"role":"user","content":"now"}],"stream":false}`)
	if code != http.StatusBadGateway || !strings.Contains(string(b), `no reachable Ollama has model \"beta\"`) {
		t.Fatalf("chat for the down Mac's model: %d %s, want 502 naming the model", code, b)
	}
	code, b = call(t, fa, http.MethodPost, "/api/chat", `{"model":"alpha","messages":[{"role":"user","content":"meanwhile"}],"stream":false}`)
	if code != http.StatusOK {
		t.Fatalf("alpha meanwhile: %d %s", code, b)
	}
}

// A chat for a model whose only Mac has been down longer than FOREMAN_SYNC_OUTAGE_WAIT is
// refused at once, with no job, as one for the own Mac in such an outage is: that Mac's
// foreman publishes since when its Ollama has not answered, so the call need not wait the
// bound again for what is already known (each call did, a minute by default, all night).
func TestSeveralMacsSyncCallRefusedAtOnceInALongOutage(t *testing.T) {
	_, macB, fa, _ := alphaBeta(t, func(c *app.Config) { c.SyncOutageWait = time.Second }, nil)
	macB.SetDown(true)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	eventually(t, 15*time.Second, "mac-b published down for longer than the bound", func() bool {
		all, err := fa.Store().Targets(ctx)
		return err == nil && slices.ContainsFunc(all, func(tg broker.Target) bool {
			return tg.Name == "mac-b" && !tg.Reachable && !tg.DownSince.IsZero() && time.Since(tg.DownSince) > 1500*time.Millisecond
		})
	})
	code, b := call(t, fa, http.MethodPost, "/api/chat", `{"model":"beta","messages":[{"role":"user","content":"now"}],"stream":false}`)
	if code != http.StatusBadGateway || !bytes.Contains(b, []byte("a sync call waits for it at most")) || !bytes.Contains(b, []byte(`no reachable Ollama has model \"beta\"`)) {
		t.Fatalf("chat for the long-down Mac's model: %d %s, want a 502 refusal naming the model, with no job", code, b)
	}
	jobs, _, err := fa.Store().List(ctx, broker.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 0 {
		t.Errorf("the refused call left %d jobs, want none", len(jobs))
	}
}

// Another foreman's clock may be off: its Mac's outage counts as long as that foreman
// measured it, not from its down_since read on this foreman's clock. A Mac that went down
// just now, by a clock 5 s behind, does not get a call refused at once as if it had been
// down for 5 s, past the bound (3 s here: the entry may take up to a second to be read,
// Store.Targets, and its outage grows meanwhile): the call waits the bound first.
// (Whether the entry counts at all is judged on the NATS server's clock, ADR-0056.)
func TestSeveralMacsOutageOfAnotherClockCountsItsLength(t *testing.T) {
	macA := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	nurl := sharedNATS(t)
	fa := startForeman(t, nurl, "mac-a", macA.URL, func(c *app.Config) { c.SyncOutageWait = 3 * time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, err := nats.Connect(nurl)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	behind := func() time.Time { return time.Now().Add(-5 * time.Second) }
	slow, err := broker.Open(ctx, broker.Config{Conn: nc, Now: behind})
	if err != nil {
		t.Fatal(err)
	}
	// Published again at each "poll", as a foreman does, its outage growing.
	down := behind()
	entry := broker.Target{Name: "mac-c", URL: "http://127.0.0.1:9", Reachable: false, DownSince: down, Models: []string{"gamma:latest"}}
	if err := slow.PublishTarget(ctx, entry); err != nil {
		t.Fatal(err)
	}
	pctx, stopPolls := context.WithCancel(ctx)
	polls := make(chan struct{})
	go func() {
		defer close(polls)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-tick.C:
				_ = slow.PublishTarget(pctx, entry)
			}
		}
	}()
	defer func() { stopPolls(); <-polls }()
	eventually(t, 10*time.Second, "mac-c listed, not reachable", func() bool {
		_, b := call(t, fa, http.MethodGet, "/healthz", "")
		return bytes.Contains(b, []byte(`"name":"mac-c"`))
	})
	code, b := call(t, fa, http.MethodPost, "/api/chat", `{"model":"gamma","messages":[{"role":"user","content":"hi"}],"stream":false}`)
	if code != http.StatusBadGateway || !bytes.Contains(b, []byte("the job was canceled")) {
		t.Fatalf("chat for the model of a Mac down just now by a slow clock: %d %s, want its job canceled after the bound, not refused at once", code, b)
	}
}

// A call for a model only another Mac has is not relayed to it while its foreman says its
// Ollama is unreachable: one that takes connections and answers nothing held the call
// with no bound (its own foreman bounds only its own callers). It is refused at once.
func TestSeveralMacsNoRelayToAnUnreachableMac(t *testing.T) {
	macA := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	macC := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "gamma:latest"}))
	for _, path := range []string{"/api/show", "/api/embed", "/v1/models/gamma"} {
		macC.FailNextOn(path, 1<<20, ollamatest.Hang)
	}
	fa := startForeman(t, sharedNATS(t), "mac-a", macA.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := fa.Store().PublishTarget(ctx, broker.Target{Name: "mac-c", URL: macC.URL, Reachable: false, Models: []string{"gamma:latest"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "mac-c listed, not reachable", func() bool {
		_, b := call(t, fa, http.MethodGet, "/healthz", "")
		return bytes.Contains(b, []byte(`"name":"mac-c"`))
	})
	for _, c := range []struct{ method, path, body string }{
		{http.MethodPost, "/api/show", `{"model":"gamma"}`},
		{http.MethodPost, "/api/embed", `{"model":"gamma","input":"x"}`},
		{http.MethodGet, "/v1/models/gamma", ""},
	} {
		if code, b := call(t, fa, c.method, c.path, c.body); code != http.StatusBadGateway || !bytes.Contains(b, []byte("unreachable")) {
			t.Errorf("%s %s for the unreachable Mac's model: %d %s, want 502", c.method, c.path, code, b)
		}
	}
	for _, c := range macC.Calls() {
		if c.Path != "/api/tags" && c.Path != "/api/ps" {
			t.Errorf("the unreachable Mac got %s %s", c.Method, c.Path)
		}
	}
}

// A Mac whose Ollama answers its model list with an error status (a proxy passing only
// the model calls) lists no model, and on a shared NATS its worker runs only models its
// list has: a job for one of its models is refused saying why, not accepted to wait for
// nothing (it stayed queued to its TTL).
func TestSeveralMacsListAnsweredWithAnErrorIsRefused(t *testing.T) {
	macA := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	macA.FailNextOn("/api/tags", 1<<20, ollamatest.Fail500)
	fa := startForeman(t, sharedNATS(t), "mac-a", macA.URL)
	eventually(t, 10*time.Second, "a poll answered with an error", func() bool {
		_, b := call(t, fa, http.MethodGet, "/healthz", "")
		return bytes.Contains(b, []byte("500"))
	})
	code, b := call(t, fa, http.MethodPost, "/jobs", `{"model":"alpha","messages":[{"role":"user","content":"hi"}]}`)
	if code != http.StatusBadGateway || !bytes.Contains(b, []byte("answers its model list with an error")) {
		t.Errorf("POST /jobs for a model of a Mac whose list is an error: %d %s, want 502 saying why", code, b)
	}
}

// A chat whose job one Mac's Ollama holds with no answer while it answers none of its
// polls (hung as a whole) is given up there after FOREMAN_SYNC_OUTAGE_WAIT and answered
// by another Mac that has the model: the caller neither waits out the first-byte limit
// (5m; for a call that does not stream, the non-stream limit, 30m) nor gets a 502 while
// a Mac can answer it.
func TestSeveralMacsSyncCallMovesOffASilentMac(t *testing.T) {
	macA := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	macB := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	nurl := sharedNATS(t)
	quick := func(c *app.Config) { c.SyncOutageWait = time.Second }
	fa := startForeman(t, nurl, "mac-a", macA.URL, quick)
	waitTargets(t, fa, 1)
	release := macA.Hold("alpha")
	defer release()
	type answer struct {
		code int
		body []byte
		err  error
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	answered := make(chan answer, 1)
	go func() {
		var a answer
		defer func() { answered <- a }()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+fa.Addr()+"/api/chat",
			strings.NewReader(`{"model":"alpha","messages":[{"role":"user","content":"hi"}],"stream":false}`))
		if err != nil {
			a.err = err
			return
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			a.err = err
			return
		}
		defer resp.Body.Close()
		a.code = resp.StatusCode
		a.body, a.err = io.ReadAll(resp.Body)
	}()
	if err := macA.WaitStarted(ctx, "alpha", 1); err != nil {
		t.Fatal(err)
	}
	fb := startForeman(t, nurl, "mac-b", macB.URL, quick)
	waitTargets(t, fa, 2)
	waitTargets(t, fb, 2)
	macA.SetDown(true) // its polls go unanswered from now on; the chat stays held
	a := <-answered    // within ctx's 30 s: the call has no other bound short of the limits above
	if a.err != nil || a.code != http.StatusOK || !bytes.Contains(a.body, []byte(`"done":true`)) {
		t.Fatalf("chat held by the silent mac-a: %d %s %v, want mac-b's answer", a.code, a.body, a.err)
	}
	if n := len(macB.Calls()); n == 0 || !slices.ContainsFunc(macB.Calls(), func(c ollamatest.Call) bool { return c.Path == "/api/chat" && c.Finished }) {
		t.Errorf("mac-b finished no chat (%d calls)", n)
	}
}

// GET /v1/models on the foreman of a Mac whose Ollama does not answer still lists every
// Mac's models, its own from the last known list, as /api/tags does: an OpenAI client
// that lists models on load keeps working against it while another Mac serves; and
// GET /api/version is another Mac's answer.
func TestSeveralMacsOpenAIModelsWhileTheOwnMacIsDown(t *testing.T) {
	macA, _, fa, _ := alphaBeta(t, nil, nil)
	macA.SetDown(true)
	waitTargets(t, fa, 1) // mac-a's own poll failed
	code, b := call(t, fa, http.MethodGet, "/v1/models", "")
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if code != http.StatusOK || json.Unmarshal(b, &list) != nil {
		t.Fatalf("GET /v1/models on the down Mac's foreman: %d %s, want 200", code, b)
	}
	var ids []string
	for _, m := range list.Data {
		ids = append(ids, m.ID)
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"alpha:latest", "beta:latest"}) {
		t.Errorf("models %v, want both Macs' (alpha from the last known list)", ids)
	}
	// The connection check of a client (Open WebUI asks /api/version) finds an Ollama.
	if code, b := call(t, fa, http.MethodGet, "/api/version", ""); code != http.StatusOK || !bytes.Contains(b, []byte(`"version"`)) {
		t.Errorf("GET /api/version on the down Mac's foreman: %d %s, want another Mac's answer", code, b)
	}
}

// A chat whose job runs, with no answer yet, on the only Mac that has its model is
// canceled by the foreman it entered through once that Mac's foreman has said for
// FOREMAN_SYNC_OUTAGE_WAIT that its Ollama answers nothing: the caller does not wait for
// that Mac's worker to give the attempt up (its own bound, here a minute), nor, should
// the job then go to another Mac that hangs too, for that one's.
func TestSeveralMacsSyncCallOnAnotherSilentMacEnds(t *testing.T) {
	_, macB, fa, _ := alphaBeta(t, func(c *app.Config) { c.SyncOutageWait = time.Second }, func(c *app.Config) { c.SyncOutageWait = time.Minute })
	release := macB.Hold("beta")
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		_ = macB.WaitStarted(ctx, "beta", 1)
		macB.SetDown(true) // its polls fail from now on; the chat stays held
	}()
	code, b := call(t, fa, http.MethodPost, "/api/chat", `{"model":"beta","messages":[{"role":"user","content":"hi"}],"stream":false}`)
	if code != http.StatusBadGateway || !bytes.Contains(b, []byte("the job was canceled")) || !bytes.Contains(b, []byte(`no reachable Ollama has model \"beta\"`)) {
		t.Fatalf("chat held by the silent mac-b: %d %s, want 502 once mac-b was down for the bound", code, b)
	}
}

// An embedding call through one foreman on a chat model only another Mac has is queued
// (ADR-0053): it runs on that Mac's worker in its turn, not straight at its Ollama
// beside the job running there.
func TestSeveralMacsEmbeddingOnAnotherMacsChatModelIsQueued(t *testing.T) {
	_, macB, fa, fb := alphaBeta(t, nil, nil)
	release := macB.Hold("beta")
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	post := func(a *app.App, path, body string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+a.Addr()+path, strings.NewReader(body))
		if err != nil {
			return nil, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
	chat := make(chan error, 1)
	go func() {
		_, err := post(fb, "/api/chat", `{"model":"beta","messages":[{"role":"user","content":"hi"}],"stream":false}`)
		chat <- err
	}()
	if err := macB.WaitStarted(ctx, "beta", 1); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		resp *http.Response
		err  error
	}
	embed := make(chan answer, 1)
	go func() {
		resp, err := post(fa, "/api/embed", `{"model":"beta","input":"x"}`)
		embed <- answer{resp, err}
	}()
	eventually(t, 15*time.Second, "the embedding call queued beside the running chat", func() bool {
		n, err := fa.Store().QueueLen(ctx)
		return err == nil && n == 2
	})
	for _, c := range macB.Calls() {
		if c.Path == "/api/embed" {
			t.Fatal("the embedding call reached mac-b's Ollama while its job ran")
		}
	}
	release()
	a := <-embed
	if a.err != nil || a.resp.StatusCode != http.StatusOK || a.resp.Header.Get("X-Foreman-Job-Id") == "" {
		t.Fatalf("embedding call: %v %+v", a.err, a.resp)
	}
	if err := <-chat; err != nil {
		t.Fatal(err)
	}
}

// A foreman whose Ollama it reaches at a loopback URL publishes its machine's addresses
// beside it, for the other foremen's webhook policy to protect that Ollama's port there
// too (an Ollama on OLLAMA_HOST=0.0.0.0 answers on them).
func TestSeveralMacsLoopbackTargetPublishesItsMachineAddrs(t *testing.T) {
	machine := webhook.MachineAddrs()
	if len(machine) == 0 {
		t.Skip("this machine has no address but loopback ones")
	}
	mac := ollamatest.New(t) // at http://127.0.0.1:<port>
	fa := startForeman(t, sharedNATS(t), "mac-a", mac.URL)
	eventually(t, 15*time.Second, "mac-a's entry with its machine's addresses", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		all, err := fa.Store().Targets(ctx)
		if err != nil {
			return false
		}
		for _, tg := range all {
			if tg.Name == "mac-a" {
				return slices.Equal(tg.Addrs, machine)
			}
		}
		return false
	})
}
