package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// syncAnswer is what a call made in the background got.
type syncAnswer struct {
	code int
	body []byte
	err  error
}

// chatInBackground posts a non-streamed chat for model to a within ctx and delivers its
// answer on the channel returned.
func chatInBackground(ctx context.Context, a *app.App, model string) <-chan syncAnswer {
	answered := make(chan syncAnswer, 1)
	go func() {
		var ans syncAnswer
		defer func() { answered <- ans }()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+a.Addr()+"/api/chat",
			strings.NewReader(`{"model":"`+model+`","messages":[{"role":"user","content":"hi"}],"stream":false}`))
		if err != nil {
			ans.err = err
			return
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			ans.err = err
			return
		}
		defer resp.Body.Close()
		ans.code = resp.StatusCode
		ans.body, ans.err = io.ReadAll(resp.Body)
	}()
	return answered
}

// A chat waiting through one foreman for a model only another Mac has is answered 502
// within FOREMAN_SYNC_OUTAGE_WAIT once that Mac's foreman stops: its entry is withdrawn,
// no target lists the model any more, and the job handed back would wait for that Mac's
// return with no bound (the caller waited for ever).
func TestSeveralMacsSyncCallEndsWhenTheOnlyMacWithItsModelLeaves(t *testing.T) {
	_, macB, fa, fb := alphaBeta(t, func(c *app.Config) { c.SyncOutageWait = time.Second }, nil)
	macB.FailNextOn("/api/chat", 1<<20, ollamatest.Hang)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	answered := chatInBackground(ctx, fa, "beta")
	if err := macB.WaitStarted(ctx, "beta", 1); err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithTimeout(ctx, 4*time.Second)
	defer stop()
	if err := fb.Shutdown(sctx); err != nil {
		t.Logf("mac-b's foreman stopped: %v", err) // its hung job cut off at the deadline
	}
	a := <-answered // within ctx: nothing else bounds the call
	if a.err != nil || a.code != http.StatusBadGateway || !bytes.Contains(a.body, []byte("the job was canceled")) ||
		!bytes.Contains(a.body, []byte(`no reachable Ollama has model \"beta\"`)) {
		t.Fatalf("chat for the model of a Mac whose foreman stopped: %d %s %v, want 502 after the bound", a.code, a.body, a.err)
	}
	jobs, _, err := fa.Store().List(ctx, broker.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 || jobs[0].State != broker.StateCanceled {
		t.Errorf("jobs after the 502: %d (first %+v), want the one, canceled", len(jobs), jobs)
	}
}

// A chat whose job runs, with no answer yet, on a Mac no live foreman lists any more (its
// foreman killed: its entry expired, the job's record still says running) is answered 502
// within FOREMAN_SYNC_OUTAGE_WAIT too. mac-b's foreman polls once a minute here, so its
// entry, withdrawn as one that expired, stays away while its Ollama holds the call.
func TestSeveralMacsSyncCallRunningOnAMacGoneFromTheTargetsEnds(t *testing.T) {
	_, macB, fa, _ := alphaBeta(t, func(c *app.Config) { c.SyncOutageWait = time.Second },
		func(c *app.Config) { c.PollInterval = time.Minute })
	macB.FailNextOn("/api/chat", 1<<20, ollamatest.Hang)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	answered := chatInBackground(ctx, fa, "beta")
	if err := macB.WaitStarted(ctx, "beta", 1); err != nil {
		t.Fatal(err)
	}
	withdraw(t, fa, "mac-b")
	a := <-answered // within ctx: nothing else bounds the call
	if a.err != nil || a.code != http.StatusBadGateway || !bytes.Contains(a.body, []byte("the job was canceled")) ||
		!bytes.Contains(a.body, []byte("no live foreman lists it")) {
		t.Fatalf("chat running on a Mac gone from the targets: %d %s %v, want 502 after the bound", a.code, a.body, a.err)
	}
}

// The own Mac's outage says nothing of a model only another Mac has: with mac-a down
// longer than FOREMAN_SYNC_OUTAGE_WAIT, a chat for beta through mac-a's foreman while
// mac-b has a short blip is not refused at once blaming mac-a's Ollama; it waits for
// mac-b, which answers it.
func TestSeveralMacsOwnOutageSparesAnotherMacsModel(t *testing.T) {
	const bound = 3 * time.Second
	macA, macB, fa, _ := alphaBeta(t, func(c *app.Config) { c.SyncOutageWait = bound }, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	macA.SetDown(true)
	eventually(t, 15*time.Second, "mac-a down for longer than the bound", func() bool {
		all, err := fa.Store().Targets(ctx)
		return err == nil && slices.ContainsFunc(all, func(tg broker.Target) bool {
			return tg.Name == "mac-a" && !tg.Reachable && !tg.DownSince.IsZero() && time.Since(tg.DownSince) > bound+bound/4
		})
	})
	macB.SetDown(true)
	waitTargets(t, fa, 0)
	answered := chatInBackground(ctx, fa, "beta")
	eventually(t, 10*time.Second, "the chat for beta queued", func() bool {
		select {
		case a := <-answered:
			t.Fatalf("chat for beta answered while mac-b was down: %d %s %v, want it to wait for mac-b", a.code, a.body, a.err)
		default:
		}
		jobs, _, err := fa.Store().List(ctx, broker.ListOptions{})
		return err == nil && len(jobs) == 1
	})
	macB.SetDown(false)
	a := <-answered
	if a.err != nil || a.code != http.StatusOK || !bytes.Contains(a.body, []byte(`"done":true`)) {
		t.Fatalf("chat for beta once mac-b was back: %d %s %v, want mac-b's answer", a.code, a.body, a.err)
	}
}

// A model both Macs have is out only since the later of the two went down: with mac-a
// down for longer than FOREMAN_SYNC_OUTAGE_WAIT, a chat for the shared model through
// mac-a's foreman while mac-b has a short blip is not refused at once for mac-a's outage;
// it waits for mac-b, which answers it.
func TestSeveralMacsOwnOutageCountsFromTheLastMacWithTheModel(t *testing.T) {
	const bound = 3 * time.Second
	both := func() ollamatest.Option {
		return ollamatest.WithModels(ollamatest.Model{Name: "shared:latest"})
	}
	macA, macB := ollamatest.New(t, both()), ollamatest.New(t, both())
	nurl := sharedNATS(t)
	short := func(c *app.Config) { c.SyncOutageWait = bound }
	fa := startForeman(t, nurl, "mac-a", macA.URL, short)
	startForeman(t, nurl, "mac-b", macB.URL, short)
	waitTargets(t, fa, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	macA.SetDown(true)
	eventually(t, 15*time.Second, "mac-a down for longer than the bound", func() bool {
		all, err := fa.Store().Targets(ctx)
		return err == nil && slices.ContainsFunc(all, func(tg broker.Target) bool {
			return tg.Name == "mac-a" && !tg.Reachable && !tg.DownSince.IsZero() && time.Since(tg.DownSince) > bound+bound/4
		})
	})
	macB.SetDown(true)
	waitTargets(t, fa, 0)
	answered := chatInBackground(ctx, fa, "shared")
	eventually(t, 10*time.Second, "the chat for the shared model queued", func() bool {
		select {
		case a := <-answered:
			t.Fatalf("chat for the shared model answered while mac-b was down: %d %s %v, want it to wait for mac-b", a.code, a.body, a.err)
		default:
		}
		jobs, _, err := fa.Store().List(ctx, broker.ListOptions{})
		return err == nil && len(jobs) == 1
	})
	macB.SetDown(false)
	a := <-answered
	if a.err != nil || a.code != http.StatusOK || !bytes.Contains(a.body, []byte(`"done":true`)) {
		t.Fatalf("chat for the shared model once mac-b was back: %d %s %v, want mac-b's answer", a.code, a.body, a.err)
	}
}

// A chat through one foreman for a model only a stopped foreman's Mac has is answered 502
// within FOREMAN_SYNC_OUTAGE_WAIT, not once that Mac's entry lapses: the entry, written
// once at the stop and never again, says the Mac was down for no time when it was
// written, and its age (on the NATS server's clock) counts too. mac-b's foreman polls
// once a minute here, so its entry stays listed, unreachable, for three minutes.
func TestSeveralMacsSyncCallForAStoppedMacsModelEndsWithinTheBound(t *testing.T) {
	_, _, fa, fb := alphaBeta(t, func(c *app.Config) { c.SyncOutageWait = time.Second },
		func(c *app.Config) { c.PollInterval = time.Minute })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := fb.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "mac-b listed unreachable", func() bool {
		all, err := fa.Store().Targets(ctx)
		return err == nil && slices.ContainsFunc(all, func(tg broker.Target) bool { return tg.Name == "mac-b" && !tg.Reachable })
	})
	a := <-chatInBackground(ctx, fa, "beta") // within ctx: nothing else bounds the call
	if a.err != nil || a.code != http.StatusBadGateway || !bytes.Contains(a.body, []byte(`no reachable Ollama has model \"beta\"`)) ||
		bytes.Contains(a.body, []byte("no live foreman lists it")) {
		t.Fatalf("chat for the model of a Mac whose foreman stopped: %d %s %v, want 502 within the bound", a.code, a.body, a.err)
	}
}

// A chat for a model only a killed foreman's Mac has ends within FOREMAN_SYNC_OUTAGE_WAIT
// once that foreman's presence has lapsed, though its entry still says its Mac is
// reachable (a kill writes no entry; the last one lives its TTL, 90 s at the default
// poll): nobody runs the job meanwhile. The call waited the entry's life and the bound
// after it.
func TestSeveralMacsSyncCallForAKilledForemansModelEndsWithinTheBound(t *testing.T) {
	macA := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	macB := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "beta:latest"}))
	nurl := sharedNATS(t)
	// Polling once a minute, mac-a keeps the bucket's entries three minutes (the bucket
	// lives its foremen's longest TTL): mac-b's entry outlives the test.
	fa := startForeman(t, nurl, "mac-a", macA.URL, func(c *app.Config) { c.SyncOutageWait, c.PollInterval = time.Second, time.Minute })
	waitTargets(t, fa, 1)
	// mac-b's foreman as a kill leaves it: its last entry, reachable and live for ten
	// minutes more, and no presence.
	nc, err := nats.Connect(nurl)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, broker.TargetsBucket)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	entry, err := json.Marshal(broker.Target{Name: "mac-b", URL: macB.URL, Reachable: true, Models: []string{"beta:latest"},
		BootID: "01KILLEDFOREMAN0000000000", Updated: now, Expires: now.Add(10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "target.mac-b", entry); err != nil {
		t.Fatal(err)
	}
	waitTargets(t, fa, 2)
	a := <-chatInBackground(ctx, fa, "beta") // within ctx: nothing else bounds the call
	if a.err != nil || a.code != http.StatusBadGateway || !bytes.Contains(a.body, []byte(`no reachable Ollama has model \"beta\"`)) {
		t.Fatalf("chat for the model of a Mac whose foreman was killed: %d %s %v, want 502 within the bound", a.code, a.body, a.err)
	}
}
