package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

const e2eSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// runUntilCleanup runs fn in a goroutine until the test ends.
func runUntilCleanup(t *testing.T, name string, fn func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("%s did not stop", name)
		}
	})
}

// startJobsPipeline runs the real worker and a fast webhook dispatcher on b.
func startJobsPipeline(t *testing.T, b *testBundle) {
	t.Helper()
	w, err := worker.New(worker.Config{Store: b.Broker.Store, Target: b.Target, Inventory: b.Inv, RetryDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, "worker", w.Run)
	d, err := webhook.New(webhook.Config{Store: b.Broker.Store, Secret: e2eSecret, BaseDelay: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond, AckWait: 3 * time.Second,
		Policy: b.GW.cfg.WebhookPolicy})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, "webhooks", d.Run)
}

// hookHit is one webhook request.
type hookHit struct {
	header http.Header
	body   []byte
	state  broker.State
	status int
}

// hookReceiver records webhook requests; status picks each answer (request n from 1).
type hookReceiver struct {
	*httptest.Server
	hits   chan hookHit
	mu     sync.Mutex
	n      int
	status func(n int) int
}

func newHookReceiver(t *testing.T, status func(n int) int) *hookReceiver {
	r := &hookReceiver{hits: make(chan hookHit, 200), status: status}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.n++
		st := 200
		if r.status != nil {
			st = r.status(r.n)
		}
		r.mu.Unlock()
		h := hookHit{header: req.Header.Clone(), body: body, status: st}
		if j, err := broker.DecodeJob(body); err == nil {
			h.state = j.State
		}
		w.WriteHeader(st)
		r.hits <- h
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *hookReceiver) next(t *testing.T) hookHit {
	t.Helper()
	select {
	case h := <-r.hits:
		return h
	case <-time.After(20 * time.Second):
		t.Fatal("no webhook request arrived")
		return hookHit{}
	}
}

// wantLifecycle checks states are queued, optionally loading, working, done.
func wantLifecycle(t *testing.T, what string, states []broker.State) {
	t.Helper()
	got := make([]string, len(states))
	for i, s := range states {
		got[i] = string(s)
	}
	seq := strings.Join(got, ",")
	if seq != "queued,working,done" && seq != "queued,loading,working,done" {
		t.Fatalf("%s: states %s, want queued,(loading,)working,done", what, seq)
	}
}

func TestAsyncJobLifecycleWithWebhooksAndEvents(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	startJobsPipeline(t, b)
	rcv := newHookReceiver(t, func(n int) int {
		if n == 1 {
			return http.StatusInternalServerError // the first delivery fails once
		}
		return http.StatusOK
	})
	events, err := b.Broker.Conn.SubscribeSync(broker.StateWildcard)
	if err != nil {
		t.Fatal(err)
	}
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"hello"}],"stream":false,"state_webhook_url":"`+rcv.URL+`/hook"}`)
	ctx := testCtx(t, 30*time.Second)

	// NATS: every state in order, ending with done.
	var natsStates []broker.State
	for len(natsStates) == 0 || !natsStates[len(natsStates)-1].Terminal() {
		m, err := events.NextMsgWithContext(ctx)
		if err != nil {
			t.Fatalf("state events %v: %v", natsStates, err)
		}
		if ev, _ := broker.DecodeJob(m.Data); ev != nil && ev.ID == id {
			natsStates = append(natsStates, ev.State)
		}
	}
	wantLifecycle(t, "NATS events", natsStates)

	// Webhooks: the same states in order; the failed one again with the same webhook-id.
	wh, _ := standardwebhooks.NewWebhook(e2eSecret)
	var hookStates []broker.State
	first := rcv.next(t)
	retry := rcv.next(t)
	if first.status != 500 || retry.header.Get("webhook-id") != first.header.Get("webhook-id") || !bytes.Equal(first.body, retry.body) {
		t.Fatalf("retry after 500: ids %q %q", first.header.Get("webhook-id"), retry.header.Get("webhook-id"))
	}
	hookStates = append(hookStates, retry.state)
	var doneHit hookHit
	for hookStates[len(hookStates)-1] != broker.StateDone {
		h := rcv.next(t)
		if err := wh.Verify(h.body, h.header); err != nil {
			t.Fatalf("signature of %s rejected: %v", h.state, err)
		}
		hookStates = append(hookStates, h.state)
		doneHit = h
	}
	wantLifecycle(t, "webhooks", hookStates)

	v := jobsGet(t, b, id)
	if v.State != broker.StateDone || v.Attempts < 1 || len(v.Result) == 0 || !bytes.Contains(v.Result, []byte(`"message"`)) {
		t.Fatalf("finished job %+v result %s", v, v.Result)
	}
	var sawResult bool
	for _, a := range v.Artifacts {
		sawResult = sawResult || (a.Name == "result.json" && a.Data != nil)
	}
	if !sawResult {
		t.Fatalf("no inline result.json artifact: %+v", v.Artifacts)
	}

	// The delivery log shows the failure and the deliveries.
	resp, out := b.request(t, http.MethodGet, "/jobs/"+id+"/deliveries", nil)
	var dl struct {
		Deliveries []broker.DeliveryAttempt `json:"deliveries"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(out, &dl) != nil || len(dl.Deliveries) < 4 ||
		dl.Deliveries[0].Status != 500 || dl.Deliveries[0].Outcome != broker.OutcomeRetry || dl.Deliveries[1].Outcome != broker.OutcomeDelivered {
		t.Fatalf("deliveries: %d %s", resp.StatusCode, out)
	}

	// A manual redelivery sends the done event again, same id and body.
	resp, out = b.request(t, http.MethodPost, "/jobs/"+id+"/deliveries/redeliver", nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("redeliver: %d %s", resp.StatusCode, out)
	}
	again := rcv.next(t)
	if again.header.Get("webhook-id") != doneHit.header.Get("webhook-id") || !bytes.Equal(again.body, doneHit.body) {
		t.Fatalf("redelivered %s %s", again.header.Get("webhook-id"), again.body)
	}
}

func TestAsyncJobCancelQueuedAndRunning(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	startJobsPipeline(t, b)
	ctx := testCtx(t, 30*time.Second)
	release := b.Fake.Hold("tiny-a")
	defer release()

	const chat = `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`
	running := jobsSubmit(t, b, chat)
	if err := b.Fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	queued := jobsSubmit(t, b, chat)
	for _, id := range []string{queued, running} {
		// The running job's answer waits for the worker to end it: both come back canceled.
		resp, out := b.request(t, http.MethodDelete, "/jobs/"+id, nil)
		var v jobView
		if resp.StatusCode != 200 || json.Unmarshal(out, &v) != nil || v.State != broker.StateCanceled || v.Error != "canceled by DELETE /jobs" {
			t.Fatalf("cancel %s: %d %s", id, resp.StatusCode, out)
		}
	}
	// The running request is aborted at the target.
	if err := b.Fake.WaitFor(ctx, func(calls []ollamatest.Call) bool {
		for _, c := range calls {
			if c.Path == "/api/chat" && c.Canceled {
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatalf("running job not aborted: %v", err)
	}
	release()
	// The queued job never reaches the target: a later job runs, and only it and the
	// first one ever called chat.
	later := jobsSubmit(t, b, chat)
	waitJobState(t, b, later, broker.StateDone)
	chats := 0
	for _, c := range b.Fake.Calls() {
		if c.Path == "/api/chat" {
			chats++
		}
	}
	if chats != 2 {
		t.Fatalf("%d chat calls, want 2 (the canceled queued job must not run)", chats)
	}
	for _, id := range []string{queued, running} {
		if v := jobsGet(t, b, id); v.State != broker.StateCanceled {
			t.Fatalf("job %s is %s", id, v.State)
		}
	}
	resp, out := b.request(t, http.MethodDelete, "/jobs/"+later, nil)
	wantJobError(t, "cancel a finished job", resp, out, http.StatusConflict)
}

// waitJobState reads job id through GET /jobs/{id} at once and again after each of its
// state events, until it is in state want. The watch starts before the first read, so no
// write slips between them.
func waitJobState(t *testing.T, b *testBundle, id string, want broker.State) jobView {
	t.Helper()
	ctx := testCtx(t, 20*time.Second)
	w, err := b.Broker.Store.WatchJob(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for {
		v := jobsGet(t, b, id)
		if v.State == want {
			return v
		}
		if v.State.Terminal() {
			t.Fatalf("job %s is %s (%s), want %s", id, v.State, v.Error, want)
		}
		if _, err := w.Next(ctx); err != nil {
			t.Fatalf("job %s is %s (%s), want %s: %v", id, v.State, v.Error, want, err)
		}
	}
}

func TestNATSClientSubmitsAndWatches(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withBroker(brokertest.WithNATS(func(c *natsd.Config) {
		c.Listen, c.ClientUser, c.ClientPassword = "127.0.0.1:0", "app", "pw"
	})))
	startJobsPipeline(t, b)
	runUntilCleanup(t, "nats submit", b.GW.RunNATSSubmit)
	ctx := testCtx(t, 30*time.Second)

	if _, err := nats.Connect(b.Broker.Server.ClientURL(), nats.UserInfo("app", "wrong"), nats.Timeout(10*time.Second)); err == nil {
		t.Fatal("wrong password accepted")
	}
	violations := make(chan error, 8)
	nc, err := nats.Connect(b.Broker.Server.ClientURL(), nats.UserInfo("app", "pw"), nats.Timeout(10*time.Second),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	events, err := nc.SubscribeSync("foreman.job.*.state")
	if err != nil {
		t.Fatal(err)
	}
	var reply submitReply
	for {
		m, err := nc.RequestWithContext(ctx, broker.SubmitSubject, []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`))
		if errors.Is(err, nats.ErrNoResponders) {
			continue // the responder is still subscribing
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(m.Data, &reply); err != nil || reply.JobID == "" {
			t.Fatalf("submit reply %s", m.Data)
		}
		break
	}
	var states []broker.State
	for len(states) == 0 || !states[len(states)-1].Terminal() {
		m, err := events.NextMsgWithContext(ctx)
		if err != nil {
			t.Fatalf("events %v: %v", states, err)
		}
		if ev, _ := broker.DecodeJob(m.Data); ev != nil && ev.ID == reply.JobID {
			states = append(states, ev.State)
		}
	}
	wantLifecycle(t, "client events", states)

	// The client may not feed the queue or use the JetStream API.
	_ = nc.Publish("foreman.queue.x", []byte(`{}`))
	js, _ := jetstream.New(nc)
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := js.AccountInfo(sctx); err == nil {
		t.Fatal("client used the JetStream API")
	}
	for _, subj := range []string{"foreman.queue.x", "$JS.API"} {
		select {
		case err := <-violations:
			if !strings.Contains(err.Error(), subj) {
				t.Fatalf("violation %v, want one about %s", err, subj)
			}
		case <-ctx.Done():
			t.Fatalf("no permissions violation for %s", subj)
		}
	}
}

func TestJobTTLRemovesRecordDeliveriesAndArtifacts(t *testing.T) {
	t.Parallel()
	// Time enough, on a loaded machine, to run the job and deliver its webhook before the
	// TTL ends both (the worker ends a job still waiting at three quarters of it).
	b := newTestBundle(t, withBroker(brokertest.WithStore(func(c *broker.Config) { c.JobTTL = 6 * time.Second })))
	startJobsPipeline(t, b)
	rcv := newHookReceiver(t, nil)
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[],"state_webhook_url":"`+rcv.URL+`","webhook_events":["done"]}`)
	rcv.next(t)
	ctx := testCtx(t, 30*time.Second)
	// Everything exists once the delivery is logged.
	eventually(t, 20*time.Second, "delivery logged", func() bool {
		log, _ := b.Broker.Store.Deliveries(ctx, id)
		return len(log) > 0
	})
	obs, err := b.Broker.JetStream(t).ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	// ... and is gone after the TTL.
	eventually(t, 20*time.Second, "record, delivery log and artifact gone after the TTL", func() bool {
		// Cheapest first: each artifact read sets up a consumer.
		if _, _, jerr := b.Broker.Store.Get(ctx, id); !errors.Is(jerr, broker.ErrNotFound) {
			return false
		}
		if log, lerr := b.Broker.Store.Deliveries(ctx, id); lerr != nil || len(log) != 0 {
			return false
		}
		_, oerr := obs.GetBytes(ctx, id+"/result.json")
		return errors.Is(oerr, jetstream.ErrObjectNotFound)
	})
	resp, out := b.request(t, http.MethodGet, "/jobs/"+id, nil)
	wantJobError(t, "expired job", resp, out, http.StatusNotFound)
}

// TestAsyncChatMatchesOllamaE2E runs an async chat job against a real Ollama and compares
// its result with Ollama's own stream:false answer.
func TestAsyncChatMatchesOllamaE2E(t *testing.T) {
	url := ollamatest.RealOllama(t)
	client, err := ollama.NewClient(ollama.ClientConfig{BaseURL: url, ResponseHeaderTimeout: -1})
	if err != nil {
		t.Fatal(err)
	}
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: client})
	ctx := testCtx(t, 2*time.Minute)
	if err := inv.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	bb := brokertest.New(t)
	gw, err := New(Config{Store: bb.Store, Target: client, Inventory: inv})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	defer srv.Close()
	b := &testBundle{Broker: bb, Target: client, Inv: inv, GW: gw, HTTP: srv, URL: srv.URL}
	w, err := worker.New(worker.Config{Store: bb.Store, Target: client, Inventory: inv})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, "worker", w.Run)

	req := `{"model":"tiny-a","messages":[{"role":"user","content":"why is the sky blue?"}],"options":{"temperature":0,"num_predict":16}`
	for _, stream := range []string{"false", "true"} {
		id := jobsSubmit(t, b, req+`,"stream":`+stream+`}`)
		v := waitJobState(t, b, id, broker.StateDone)
		var direct []byte
		if _, err := client.Stream(ctx, "/api/chat", []byte(req+`,"stream":false}`), func(frame []byte) error {
			direct = append(direct, frame...)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if got, want := comparable(t, v.Result), comparable(t, direct); got != want {
			t.Fatalf("stream:%s job result\n%s\ndiffers from Ollama's\n%s", stream, got, want)
		}
	}
}

// comparable drops the fields that differ between two identical runs (times, durations).
func comparable(t *testing.T, raw []byte) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("result %s: %v", raw, err)
	}
	for k := range m {
		if k == "created_at" || strings.HasSuffix(k, "_duration") {
			delete(m, k)
		}
	}
	out, _ := json.Marshal(m)
	return string(out)
}

// TestRedeliverWhilePendingIs409: while a job's manual redelivery is pending (its
// receiver hangs on the event before it), another request is a 409 naming it, not
// another 202 queueing the record again.
func TestRedeliverWhilePendingIs409(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	arrived, release := make(chan struct{}, 10), make(chan struct{})
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(rcv.Close)
	t.Cleanup(func() { close(release) }) // before the receiver closes, which waits for its handlers
	d, err := webhook.New(webhook.Config{Store: b.Broker.Store, Timeout: time.Minute, Policy: b.GW.cfg.WebhookPolicy})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, "webhooks", d.Run)
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"state_webhook_url":"`+rcv.URL+`/hook","webhook_events":["queued"]}`)
	select {
	case <-arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("no webhook request arrived")
	}
	// The dispatcher takes redeliveries once its consumer runs: a 503 before is asked again.
	var (
		resp *http.Response
		out  []byte
	)
	eventually(t, 15*time.Second, "the dispatcher answering a redelivery", func() bool {
		resp, out = b.request(t, http.MethodPost, "/jobs/"+id+"/deliveries/redeliver", nil)
		return resp.StatusCode != http.StatusServiceUnavailable
	})
	var accepted struct {
		WebhookID string `json:"webhook_id"`
	}
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(out, &accepted) != nil || accepted.WebhookID == "" {
		t.Fatalf("first redeliver: %d %s", resp.StatusCode, out)
	}
	resp, out = b.request(t, http.MethodPost, "/jobs/"+id+"/deliveries/redeliver", nil)
	wantJobError(t, "redeliver while one is pending", resp, out, http.StatusConflict)
	if !strings.Contains(string(out), "already pending") || !strings.Contains(string(out), accepted.WebhookID) {
		t.Fatalf("redeliver while one is pending: %s", out)
	}
}

// TestRedeliverWithNoWantedEventIs409: a job whose webhook_events want only done, while
// it waits, has no event to send again: the request is a 409 saying so, and nothing is
// sent (the job's queued event is no webhook of it).
func TestRedeliverWithNoWantedEventIs409(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("a webhook was sent: %s %s", r.Header.Get("webhook-id"), r.URL)
	}))
	t.Cleanup(rcv.Close)
	d, err := webhook.New(webhook.Config{Store: b.Broker.Store, Policy: b.GW.cfg.WebhookPolicy})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, "webhooks", d.Run)
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"state_webhook_url":"`+rcv.URL+`/hook","webhook_events":["done"]}`)
	var (
		resp *http.Response
		out  []byte
	)
	// The dispatcher takes redeliveries once its consumer runs: a 503 before is asked again.
	eventually(t, 15*time.Second, "the dispatcher answering a redelivery", func() bool {
		resp, out = b.request(t, http.MethodPost, "/jobs/"+id+"/deliveries/redeliver", nil)
		return resp.StatusCode != http.StatusServiceUnavailable
	})
	wantJobError(t, "redeliver of a job with no event its webhook_events want", resp, out, http.StatusConflict)
	if !strings.Contains(string(out), "no state event its webhook_events want (done)") || !strings.Contains(string(out), "it is queued") {
		t.Fatalf("redeliver of a job with no event its webhook_events want: %s", out)
	}
}
