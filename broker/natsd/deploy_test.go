package natsd_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// shippedClusterConf is the NATS cluster example operators copy.
const shippedClusterConf = "../../deploy/nats-cluster.conf"

// shippedCluster is one node started from the shipped cluster config, with foreman (store
// and NATS submit responder) logged in as the config's foreman user.
type shippedCluster struct {
	url                    string
	clientUser, clientPass string
	internal               *nats.Conn
	store                  *broker.Store
	stopSubmit             func() // stops the submit responder and waits for its answers
}

// startShippedCluster loads deploy/nats-cluster.conf and changes only what a test must:
// loopback and a random port, a temporary store, and no cluster (a single node).
func startShippedCluster(t *testing.T) *shippedCluster {
	t.Helper()
	opts, err := server.ProcessConfigFile(shippedClusterConf)
	if err != nil {
		t.Fatalf("load %s: %v", shippedClusterConf, err)
	}
	if opts.Cluster.Name == "" || len(opts.Routes) != 3 || opts.ServerName == "" {
		t.Fatalf("the shipped config is not one node of a three-node cluster: cluster %q, %d routes, server %q",
			opts.Cluster.Name, len(opts.Routes), opts.ServerName)
	}
	// Routes to a node that froze are dropped within 15 s: with the defaults (a ping each
	// 2 minutes) the foremen on the healthy nodes stalled about 80 s in a run of three
	// real nodes, one frozen (SIGSTOP).
	if opts.Cluster.PingInterval <= 0 || opts.Cluster.PingInterval*time.Duration(opts.Cluster.MaxPingsOut+1) > 15*time.Second {
		t.Fatalf("the shipped config's routes notice a frozen node after %s × %d pings, want within 15s",
			opts.Cluster.PingInterval, opts.Cluster.MaxPingsOut+1)
	}
	opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
	opts.StoreDir = t.TempDir()
	opts.JetStreamMaxStore = 1 << 30
	opts.Cluster = server.ClusterOpts{}
	opts.Routes, opts.RoutesStr = nil, ""
	opts.NoSigs, opts.NoLog = true, true
	if !opts.JetStream {
		t.Fatal("the shipped config does not enable JetStream")
	}
	sc := &shippedCluster{}
	var foremanPass string
	for _, u := range opts.Users {
		switch {
		case u.Username == "foreman":
			foremanPass = u.Password
			if u.Account == nil || u.Account.Name != "FOREMAN" {
				t.Fatalf("user foreman is not in account FOREMAN: %+v", u.Account)
			}
		case sc.clientUser == "":
			sc.clientUser, sc.clientPass = u.Username, u.Password
		}
	}
	if foremanPass == "" || sc.clientUser == "" {
		t.Fatalf("the shipped config needs a foreman user and a client user: %d users", len(opts.Users))
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("server from %s: %v", shippedClusterConf, err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server from the shipped config not ready")
	}
	sc.url = ns.ClientURL()

	sc.internal, err = nats.Connect(sc.url, nats.UserInfo("foreman", foremanPass), nats.Timeout(10*time.Second))
	if err != nil {
		t.Fatalf("foreman login: %v", err)
	}
	t.Cleanup(sc.internal.Close)
	ctx := ctxT(t)
	sc.store, err = broker.Open(ctx, broker.Config{Conn: sc.internal})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}

	fake := ollamatest.New(t)
	target, err := ollama.NewClient(ollama.ClientConfig{BaseURL: fake.URL, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: target, Interval: time.Hour, PollTimeout: 5 * time.Second})
	if err := inv.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{Store: sc.store, Target: target, Inventory: inv})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.RunNATSSubmit(runCtx) }()
	var stopped bool
	sc.stopSubmit = func() {
		if stopped {
			return
		}
		stopped = true
		stop()
		if err := <-done; err != nil {
			t.Errorf("RunNATSSubmit: %v", err)
		}
	}
	t.Cleanup(sc.stopSubmit)
	return sc
}

// TestShippedClusterConfig checks deploy/nats-cluster.conf itself: its client user gets
// job events and submits jobs, and nothing else of foreman's.
func TestShippedClusterConfig(t *testing.T) {
	t.Parallel()
	sc := startShippedCluster(t)
	ctx := ctxT(t)
	nc, errs := connectClient(t, sc.url, nats.UserInfo(sc.clientUser, sc.clientPass))

	events, err := nc.SubscribeSync(broker.StateWildcard)
	if err != nil {
		t.Fatal(err)
	}
	inbox, err := nc.SubscribeSync("_INBOX.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// foreman's own traffic: a submit and a read, JetStream requests answered on its inbox.
	j, err := sc.store.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat},
		[]byte(`{"model":"tiny-a","messages":[{"role":"user","content":"SECRET-PROMPT"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	_, rev, err := sc.store.Get(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	m, err := events.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatalf("client got no job event: %v", err)
	}
	if ev, _ := broker.DecodeJob(m.Data); ev == nil || ev.ID != j.ID || ev.State != broker.StateQueued {
		t.Fatalf("event %s on %s", m.Data, m.Subject)
	}
	// Anything routed to the client before this round trip is in its pending queue now.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := inbox.Pending(); n != 0 {
		m, _ := inbox.NextMsg(time.Second)
		t.Errorf("client _INBOX.> saw %d messages of foreman's own traffic, first on %s: %.80s", n, m.Subject, m.Data)
	}

	// Submit by request/reply.
	var reply struct {
		JobID string `json:"job_id"`
		Error string `json:"error"`
	}
	for {
		r, err := nc.RequestWithContext(ctx, broker.SubmitSubject, []byte(`{"model":"tiny-a","prompt":"hi","kind":"generate"}`))
		if err != nil && strings.Contains(err.Error(), "no responders") {
			continue // the responder is still subscribing
		}
		if err != nil {
			t.Fatalf("submit request: %v", err)
		}
		if err := json.Unmarshal(r.Data, &reply); err != nil || reply.JobID == "" {
			t.Fatalf("submit reply %s (%v)", r.Data, err)
		}
		break
	}
	if _, _, err := sc.store.Get(ctx, reply.JobID); err != nil {
		t.Fatalf("submitted job: %v", err)
	}
	_ = inbox.Unsubscribe() // the client's own reply went there; it has served its purpose

	// Publishing into the queue: denied.
	token, _ := broker.ModelToken("tiny-a")
	queued, err := sc.store.QueueLen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.Publish(broker.QueueSubject(token), []byte(`junk`))
	wantViolation(t, errs, broker.QueueSubject(token))

	// Forged reply subjects on a submit must make foreman write nothing there.
	for _, forged := range []string{"$KV." + broker.JobsBucket + ".job." + j.ID, broker.QueueSubject(token)} {
		if err := nc.PublishRequest(broker.SubmitSubject, forged, []byte(`not json`)); err != nil {
			t.Fatal(err)
		}
	}
	// The responder took both from its subscription before this request (one client, one
	// subscription: in order); stopping it waits for its answers, the flush for their delivery.
	if _, err := nc.RequestWithContext(ctx, broker.SubmitSubject, []byte(`not json`)); err != nil {
		t.Fatalf("submit request: %v", err)
	}
	sc.stopSubmit()
	if err := sc.internal.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, revAfter, err := sc.store.Get(ctx, j.ID); err != nil || revAfter != rev || got.State != broker.StateQueued {
		t.Errorf("job record changed by a forged reply: %+v rev %d→%d (%v)", got, rev, revAfter, err)
	}
	if n, err := sc.store.QueueLen(ctx); err != nil || n != queued {
		t.Fatalf("queue holds %d messages, want %d (%v)", n, queued, err)
	}
}
