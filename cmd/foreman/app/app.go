package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// App is a running foreman: everything serve starts, in the order Shutdown stops it.
type App struct {
	cfg     Config
	log     *slog.Logger
	dataDir string
	bootID  string
	natsSrv *natsd.Server // nil with an external NATS
	nc      *nats.Conn
	store   *broker.Store
	target  *ollama.HTTPClient
	inv     *ollama.Inventory
	// known is the target's model list as stored in broker.KnownModelsBucket (ADR-0047).
	known knownModels
	// published is the target's entry as last published (publishTarget).
	published publishedTarget
	// clients are the other foremen's targets, by URL (targetClient), those of the
	// targets live at the last poll (pruneClients).
	clientsMu sync.Mutex
	clients   map[string]*ollama.HTTPClient
	gw        *gateway.Server
	worker    *worker.Worker
	http      *http.Server
	conns     httpConns // the HTTP server's connections by state
	ln        net.Listener
	// pprof and pprofLn serve the runtime profiles (Config.PprofAddr), nil without.
	pprof   *http.Server
	pprofLn net.Listener

	// publishFails and rememberFails log the failures of the inventory poll's writes
	// (onPoll): during a NATS outage, once per failurelog.Every, not at every poll.
	publishFails, rememberFails failurelog.Loop

	// liveEndpoints and seenEndpoints are the host:ports of the targets live at the last
	// read and of those seen before and gone since (targetEndpoints).
	endpointsMu   sync.Mutex
	liveEndpoints []string
	seenEndpoints []string

	// denied ends the start with the NATS server's refusal of a request of foreman's user
	// (a permissions violation), which nats.go reports apart from the request: the request
	// itself only times out, and the start would wait for the cluster for ever.
	denied natsDenial

	cancel   context.CancelFunc // stops the background components
	wg       sync.WaitGroup
	failed   chan error
	stopOnce sync.Once
	stopErr  error
}

// Start starts foreman with cfg (zero settings take their defaults): the NATS connection
// (an embedded server unless cfg.NATSURL), the store, the target client and inventory,
// the HTTP listener, the gateway, the worker, the webhook dispatcher and the NATS submit
// responder. On an error everything started is stopped again. log is required.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (_ *App, err error) {
	cfg = cfg.WithDefaults()
	a := &App{cfg: cfg, log: log, failed: make(chan error, 8)}
	defer func() {
		if err != nil {
			sctx, cancel := abandonCtx(ctx, cfg.ShutdownTimeout)
			defer cancel()
			_ = a.Shutdown(sctx)
		}
	}()
	if err := a.startNATS(ctx); err != nil {
		return nil, err
	}
	// A new boot id at every start tells this process's sync callers from those of a
	// crashed one; the embedded server's data-dir lock makes the store ours alone.
	a.bootID = broker.NewID()
	var writeFault func() error
	if a.natsSrv != nil {
		writeFault = func() error {
			err := a.natsSrv.WriteError(broker.JobStreams()...)
			if errors.Is(err, natsd.ErrDataDirUnchecked) {
				return broker.FaultMayPass(err) // not known to last until a restart
			}
			return err
		}
	}
	scfg := broker.Config{
		Conn: a.nc, JobTTL: cfg.JobTTL, MaxQueue: int64(cfg.MaxQueue), MaxAttempts: cfg.MaxAttempts, AckWait: cfg.AckWait,
		Replicas: cfg.NATSReplicas, BootID: a.bootID, Exclusive: a.natsSrv != nil, Logger: log,
		TargetTTL: targetTTL(cfg.PollInterval), WriteFault: writeFault,
	}
	if adjust := cfg.Components.Store; adjust != nil {
		adjust(&scfg)
	}
	octx, stopOpen := a.denied.watch(ctx)
	a.store, err = broker.Open(octx, scfg)
	stopOpen()
	if err != nil {
		if denial := a.denied.err(); denial != nil {
			return nil, fmt.Errorf("FOREMAN_NATS_URL=%q: the NATS server refused foreman's user a request: %w "+
				"(foreman's user needs an account with JetStream and no publish or subscribe limits: see deploy/nats-cluster.conf)",
				ollama.RedactURLs(a.cfg.NATSURL), denial)
		}
		if errors.Is(err, broker.ErrNoJetStream) {
			return nil, fmt.Errorf("FOREMAN_NATS_URL=%q: %w: start nats-server with -js (or a jetstream {} block "+
				"in its configuration), or point FOREMAN_NATS_URL at one that runs it", ollama.RedactURLs(a.cfg.NATSURL), err)
		}
		return nil, replicasError(err, scfg.Replicas)
	}
	a.target, err = ollama.NewClient(ollama.ClientConfig{BaseURL: cfg.OllamaURL, Token: cfg.OllamaToken, ResponseHeaderTimeout: -1, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("FOREMAN_OLLAMA_URL=%q: %w", ollama.RedactURL(cfg.OllamaURL), err)
	}
	// A poll that sees the target back wakes a worker paused for it at once, and has the
	// embedding model warmed (keepEmbedderWarm), apart from the poll.
	targetBack := make(chan struct{}, 1)
	warm := make(chan struct{}, 1)
	onRecover := func(context.Context) {
		signal(targetBack)
		signal(warm)
	}
	// Until the target answers a poll, the models it had before the restart may be
	// queued for, also by its aliases (until a poll reads its own): a Mac still down when
	// foreman comes back takes its batch work later.
	remembered, rememberedAliases := a.rememberedModels(ctx)
	a.inv = ollama.NewInventory(ollama.InventoryConfig{
		Client: a.target, Interval: cfg.PollInterval, Logger: log, OnRecover: onRecover,
		OnPoll: a.onPoll, Remembered: remembered, RememberedAliases: rememberedAliases,
	})
	// Bind before anything runs: a taken port then fails start-up with nothing to undo,
	// and the gateway's Host check needs the address really bound.
	a.ln, err = net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("FOREMAN_ADDR=%q: %w", cfg.Addr, err)
	}
	if err := CheckPprofAddr(cfg); err != nil {
		return nil, err
	}
	if cfg.PprofAddr != "" {
		if a.pprofLn, err = net.Listen("tcp", cfg.PprofAddr); err != nil {
			return nil, fmt.Errorf("FOREMAN_PPROF_ADDR=%q: %w", cfg.PprofAddr, err)
		}
	}
	if cfg.AuthToken == "" && len(cfg.AuthTokens) == 0 && !LoopbackAddr(cfg.Addr) {
		log.Warn("INSECURE: foreman serves a non-loopback address without FOREMAN_AUTH_TOKEN " +
			"(FOREMAN_INSECURE_NO_AUTH=true): anyone who reaches " + cfg.Addr + " can queue work and read every job's result")
	}
	if msg := plainHTTPWarning(cfg); msg != "" {
		log.Warn(msg)
	}
	if len(cfg.AuthTokens) > 0 {
		names, secretLike := tokenNames(cfg.AuthTokens)
		log.Info("named tokens: each caller's program is its token's name", "programs", names)
		if secretLike > 0 {
			log.Warn("named tokens: a name looks like a secret (a long run of hex digits or of mixed letters and digits), not shown: "+
				"entries are name:token; written as token:name, the token is a program name, which /jobs, the status page and NATS events show to every caller",
				"names_hidden", secretLike)
		}
	}
	// The worker is built first: the gateway shows its view of the queue.
	wcfg := worker.Config{
		Store: a.store, Target: a.target, Inventory: a.inv, TargetBack: targetBack, TargetName: cfg.TargetName,
		MaxConsecutive: cfg.MaxConsecutive, MaxWait: cfg.MaxWait, Logger: log,
		FirstByteTimeout: cfg.FirstByteTimeout, StreamIdleTimeout: cfg.StreamIdleTimeout, MaxJobTime: cfg.MaxJobTime,
		NonStreamTimeout: cfg.NonStreamTimeout, Runs: a.runsModel,
		// A job given up here for a silent target goes to another Mac that has its model
		// (ADR-0066).
		Elsewhere: a.offeredElsewhere,
		// An attempt with no answer while Ollama answers no poll is given up as a sync
		// call would be (ADR-0049): another Mac may run it meanwhile.
		TargetSilence: cfg.SyncOutageWait,
		// On a shared cluster the start write is stored before the call (ADR-0032).
		StartBeforeCall: a.natsSrv == nil,
		// With the embedded server this worker is the queue's one taker: an idle worker
		// calls the target as it sees a job published (ADR-0034).
		EarlyCall: a.natsSrv != nil,
	}
	if adjust := cfg.Components.Worker; adjust != nil {
		adjust(&wcfg)
	}
	a.worker, err = worker.New(wcfg)
	if err != nil {
		return nil, err
	}

	policy := WebhookPolicy(cfg, a.ln.Addr().String(), a.natsListenAddr(), a.PprofAddr())
	policy.ProtectedSource = a.targetEndpoints
	a.gw, err = gateway.New(gateway.Config{
		Store: a.store, Target: a.target, TargetURL: ollama.RedactURL(cfg.OllamaURL), Inventory: a.inv,
		TargetName: cfg.TargetName, TargetClient: a.targetClient, OwnModelsOnly: a.natsSrv == nil,
		AuthToken: cfg.AuthToken, MaxBodyBytes: cfg.MaxBodyBytes, MaxBodyBytesInFlight: cfg.MaxBodyBytesInFlight,
		NATSHealth: a.natsHealth, Logger: log,
		TargetHealth: a.targetHealth,
		ListenAddr:   a.ln.Addr().String(), Origins: cfg.Origins,
		BodyReadTimeout: cfg.BodyReadTimeout, WriteTimeout: cfg.WriteTimeout, StreamBuffer: cfg.StreamBuffer,
		SyncOutageWait: cfg.SyncOutageWait,
		WebhookPolicy:  policy,
		AuthTokens:     cfg.AuthTokens, ModelAdmins: cfg.ModelAdmins, MaxQueuePerProgram: cfg.MaxQueuePerProgram,
		SyncPriority: cfg.SyncPriority, JobsPriority: cfg.JobsPriority,
		Queue: a.worker,
	})
	if err != nil {
		return nil, err
	}

	bg, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.goRun("inventory", func() error { return a.inv.Run(bg) })
	if cfg.EmbedModel != "" {
		a.goRun("embed-warm", func() error { a.keepEmbedderWarm(bg, warm); return nil })
	}
	a.goRun("worker", func() error { return a.worker.Run(bg) })
	a.goRun("presence", func() error { return a.store.Announce(bg) })
	a.goRun("metrics", func() error { return a.gw.RunMetrics(bg) })
	if a.natsSrv != nil {
		a.goRun("data-dir", func() error { a.watchDataDir(bg); return nil })
	}

	// Webhook fan-out and job submission over NATS request/reply.
	hcfg := webhook.Config{
		Store: a.store, Secret: cfg.WebhookSecret, Attempts: cfg.WebhookAttempts, Policy: policy, Logger: log,
		OnAttempt: a.gw.WebhookAttempt,
	}
	if adjust := cfg.Components.Webhooks; adjust != nil {
		adjust(&hcfg)
	}
	hooks, err := webhook.New(hcfg)
	if err != nil {
		return nil, err
	}
	a.goRun("webhooks", func() error { return hooks.Run(bg) })
	if !cfg.Components.NoNATSSubmit {
		a.goRun("nats-submit", func() error { return a.gw.RunNATSSubmit(bg) })
	}

	// A FOREMAN_MAX_QUEUE near the largest int would wrap the sum negative, and every
	// connection would be refused: the cap stops at the largest int.
	maxConns := math.MaxInt
	if cfg.MaxQueue <= math.MaxInt-spareConns {
		maxConns = cfg.MaxQueue + spareConns
	}
	if cfg.Components.MaxConns > 0 {
		maxConns = cfg.Components.MaxConns
	}
	ln := newConnLimit(a.ln, maxConns, a.gw.ConnectionRefused, log)
	ln.bodyWait = cfg.BodyReadTimeout
	a.http = &http.Server{
		Handler:           a.gw,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    MaxHeaderBytes,
		// "OPTIONS *" goes to the gateway too: net/http's own answer reads its body
		// with no deadline, and bypasses the token and the browser policy.
		DisableGeneralOptionsHandler: true,
		// No ReadTimeout/WriteTimeout: a streamed generation may last many minutes.
		ErrorLog:  slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnState: a.conns.track,
	}
	a.goRun("http", func() error {
		if err := a.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	if a.pprofLn != nil {
		a.pprof = newPprofServer()
		log.Info("runtime profiles served", "url", "http://"+a.pprofLn.Addr().String()+"/debug/pprof/")
		a.goRun("pprof", func() error {
			if err := a.pprof.Serve(a.pprofLn); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	return a, nil
}

// PprofAddr is the host:port of the profiles' listener, or "".
func (a *App) PprofAddr() string {
	if a.pprofLn == nil {
		return ""
	}
	return a.pprofLn.Addr().String()
}

// MaxHeaderBytes bounds a request's line and headers; past it a client gets 431. net/http's
// default, 1 MiB, is parsed into a map that costs several times the bytes (a MiB of short
// headers held about 3.5 MB of heap), kept for the whole ReadHeaderTimeout or body read:
// a few hundred connections sending it grew foreman by gigabytes, before any auth check.
// Ollama's and OpenAI's clients send a few hundred bytes; 32 KiB is nginx's default
// (4 buffers of 8 KiB), which browsers' cookies are made to fit.
const MaxHeaderBytes = 32 << 10

// replicasNotSupported is nats-server's error code for a stream of more than one replica
// on a server that is not part of a cluster (JSStreamReplicasNotSupportedErr).
const replicasNotSupported jetstream.ErrorCode = 10074

// replicasError names the setting behind a store that could not be opened because the
// NATS server is a single node: FOREMAN_NATS_REPLICAS defaults to 3 with FOREMAN_NATS_URL,
// which suits a cluster, not one server.
func replicasError(err error, replicas int) error {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != replicasNotSupported {
		return err
	}
	return fmt.Errorf("FOREMAN_NATS_REPLICAS=%d: the NATS server is a single node, not a cluster: "+
		"set FOREMAN_NATS_REPLICAS=1 for a single server (%w)", replicas, err)
}

// LoopbackAddr reports whether host:port listens on loopback only: a loopback IP or
// "localhost" (natsd.LoopbackAddr, which judges the NATS listener the same way).
func LoopbackAddr(hostport string) bool { return natsd.LoopbackAddr(hostport) }

// plainHTTPWarning is the start's warning for tokens served over plain HTTP off
// loopback, or "".
func plainHTTPWarning(cfg Config) string {
	if (cfg.AuthToken == "" && len(cfg.AuthTokens) == 0) || LoopbackAddr(cfg.Addr) {
		return ""
	}
	return "plain HTTP: foreman serves " + cfg.Addr + " without TLS, so every request's bearer token, " +
		"prompt and answer cross the network in clear, for anyone on the path to read and the token to reuse; " +
		"serve it on loopback behind a TLS proxy (Caddy, nginx, tailscale serve) or only on a network you trust"
}

// WebhookPolicy is the webhook network policy (ADR-0021): the configured ranges, and
// foreman's target and its own listeners (own, as really bound) protected.
func WebhookPolicy(cfg Config, own ...string) webhook.Policy {
	p := webhook.Policy{AllowNets: cfg.WebhookAllowNets, DenyPrivate: cfg.WebhookDenyPrivate}
	if ep, err := webhook.EndpointOf(cfg.OllamaURL); err == nil {
		p.Protected = append(p.Protected, ep)
	}
	// foreman's own listeners, as really bound (a configured port 0 is known only now).
	for _, addr := range own {
		if _, port, err := net.SplitHostPort(addr); err == nil && port != "0" {
			p.Protected = append(p.Protected, addr)
		}
	}
	return p
}

// natsListenAddr is the host:port of the NATS listener for clients, or "".
func (a *App) natsListenAddr() string {
	if a.natsSrv == nil {
		return ""
	}
	u, err := url.Parse(a.natsSrv.ClientURL())
	if err != nil {
		return ""
	}
	return u.Host
}

func (a *App) startNATS(ctx context.Context) error {
	if err := CheckNATSLogin(a.cfg); err != nil {
		return err
	}
	if err := CheckNATSListener(a.cfg); err != nil {
		return err
	}
	if a.cfg.NATSURL != "" {
		opts, err := natsOptions(a.cfg)
		if err != nil {
			return err
		}
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				a.log.Error("the NATS server refused a request of foreman's user", "err", err)
				a.denied.report(err)
				return
			}
			a.log.Warn("NATS", "err", err)
		}))
		// Say when the connection to a node is lost and where it is taken up again: the
		// store's errors meanwhile ("electing a leader?") do not tell a dead or frozen
		// node from a leader election.
		opts = append(opts,
			nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
				if err == nil || nc.IsClosed() {
					return // a close of foreman's own (Shutdown)
				}
				a.log.Warn("lost the connection to a NATS server; reconnecting to a node of FOREMAN_NATS_URL",
					"err", ollama.RedactError(err, a.cfg.NATSURL))
			}),
			nats.ReconnectHandler(func(nc *nats.Conn) {
				a.log.Info("reconnected to NATS", "server", nc.ConnectedAddr())
			}))
		nc, err := connectNATS(ctx, a.cfg.NATSURL, opts, a.log)
		if err != nil {
			return fmt.Errorf("FOREMAN_NATS_URL=%q: %w", ollama.RedactURLs(a.cfg.NATSURL), ollama.RedactError(err, a.cfg.NATSURL))
		}
		a.nc = nc
		a.warnLeftBehind(ctx)
		return nil
	}
	dir := a.cfg.DataDir
	if dir == "" {
		d, err := natsd.DefaultDataDir()
		if err != nil {
			return fmt.Errorf("FOREMAN_DATA_DIR is unset and there is no user data dir: %w", err)
		}
		dir = d
	}
	a.dataDir = dir
	srv, err := natsd.Start(natsd.Config{
		DataDir: dir, Listen: a.cfg.NATSListen,
		ClientUser: a.cfg.NATSUser, ClientPassword: a.cfg.NATSPassword, ClientNkey: a.cfg.NATSNkey,
		TLSCert: a.cfg.NATSTLSCert, TLSKey: a.cfg.NATSTLSKey, Logger: a.log,
	})
	if errors.Is(err, natsd.ErrDataDir) || errors.Is(err, natsd.ErrLocked) {
		// Named as the operator gave it, or said to be the default.
		if a.cfg.DataDir == "" {
			return fmt.Errorf("the default data directory %q (FOREMAN_DATA_DIR is unset): %w", dir, err)
		}
		return fmt.Errorf("FOREMAN_DATA_DIR=%q: %w", dir, err)
	}
	if err != nil {
		return err
	}
	a.natsSrv = srv
	a.nc, err = srv.Connect()
	return err
}

// goRun runs a long-lived component; an early error from it stops foreman.
func (a *App) goRun(name string, fn func() error) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := fn(); err != nil {
			a.failed <- fmt.Errorf("%s: %w", name, err)
		}
	}()
}

// dataDirEvery is how often the embedded server's data directory is looked at.
const dataDirEvery = 2 * time.Second

// watchDataDir looks, until ctx ends, whether the embedded server's data directory is
// still in place. Once it is not (natsd.Server.DataDirError), the store refuses every
// write: submits get 503 instead of a 202 for a job the next start will not find, the
// worker pauses, and /healthz says why.
func (a *App) watchDataDir(ctx context.Context) {
	t := time.NewTicker(dataDirEvery)
	defer t.Stop()
	logged := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := a.natsSrv.DataDirError()
		if err == nil {
			continue
		}
		if !logged {
			a.log.Error("job store refuses writes", "err", err)
			logged = true
		}
		_ = a.store.CheckWriteFault()
	}
}

// Addr is the HTTP listener's address.
func (a *App) Addr() string { return a.ln.Addr().String() }

// NATSListen is the client URL of the embedded server's NATS listener, "" without one.
func (a *App) NATSListen() string {
	if a.natsSrv == nil {
		return ""
	}
	return a.natsSrv.ClientURL()
}

// Config is the configuration foreman runs with, defaults filled in.
func (a *App) Config() Config { return a.cfg }

// DataDir is the embedded server's data directory, "" with an external NATS.
func (a *App) DataDir() string { return a.dataDir }

// BootID identifies this run of foreman (broker.Config.BootID).
func (a *App) BootID() string { return a.bootID }

// Store is the job store.
func (a *App) Store() *broker.Store { return a.store }

// Conn is foreman's own NATS connection, the one under its store: for tests and tools
// that must reach NATS as foreman does, never for clients.
func (a *App) Conn() *nats.Conn { return a.nc }

// Inventory is the target's model inventory.
func (a *App) Inventory() *ollama.Inventory { return a.inv }

// Failed delivers the error of a long-running part that stopped on its own; foreman
// should then shut down.
func (a *App) Failed() <-chan error { return a.failed }

func (a *App) natsHealth() error {
	if a.natsSrv != nil {
		if err := a.natsSrv.Healthy(); err != nil {
			return err
		}
	}
	if !a.nc.IsConnected() {
		return errors.New("not connected to NATS")
	}
	return a.store.WriteHealth()
}

// targetHealth reports a target the worker saw stall (/healthz).
func (a *App) targetHealth() error {
	if a.worker == nil {
		return nil
	}
	return a.worker.TargetStall()
}

// signal sends on ch (of capacity 1) without waiting: a signal already pending stands.
func signal(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// keepEmbedderWarm warms FOREMAN_EMBED_MODEL (warmEmbedder) each time want says the
// target came back (the inventory's OnRecover), one warm-up at a time, until ctx ends.
// A warm-up lasts as long as a model load: minutes on a Mac busy with another client's
// generation, up to the first-byte limit on a wedged one. Run in the poll that saw the
// target back, it held that poll, and with it every Refresh sharing it (the worker's
// probe, the gateway's outage check): each took the target that had just answered for
// one that answered nothing, and the worker stayed paused.
func (a *App) keepEmbedderWarm(ctx context.Context, want <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-want:
		}
		a.warmEmbedder(ctx)
	}
}

// warmEmbedder loads FOREMAN_EMBED_MODEL with keep_alive -1, so embeddings never wait
// for a load.
func (a *App) warmEmbedder(ctx context.Context) {
	if a.cfg.EmbedModel == "" {
		return
	}
	body := fmt.Appendf(nil, `{"model":%q,"input":"","keep_alive":-1}`, a.cfg.EmbedModel)
	// Bounded like a job: a hung target must not hold the warm-up after the next
	// recovery back forever.
	limits := []ollama.StreamOption{ollama.FirstByteTimeout(a.cfg.FirstByteTimeout), ollama.IdleTimeout(a.cfg.StreamIdleTimeout)}
	if _, err := a.target.Stream(ctx, "/api/embed", body, func([]byte) error { return nil }, limits...); err != nil {
		if ctx.Err() != nil {
			return // foreman stops
		}
		a.log.Warn("warm embedding model", "model", a.cfg.EmbedModel, "err", err)
		return
	}
	a.log.Info("embedding model loaded and kept warm", "model", a.cfg.EmbedModel)
}

// Shutdown stops foreman in order under ctx's deadline:
//  1. stop accepting HTTP (in-flight responses go on) and stop the worker taking jobs; the
//     running job may finish until shortly before the deadline (workerDeadline), else it
//     goes back to the queue un-acked;
//  2. end the responses still waiting for a job that will not run now (503, job canceled)
//     and let the HTTP server finish; at the deadline it is closed, a failure only if a
//     request was still being answered (httpShutdownError);
//  3. stop the background components (past the deadline, the NATS connection is closed
//     under them: waitComponents), drain the NATS connection, shut the embedded server
//     down.
//
// Safe to call twice.
func (a *App) Shutdown(ctx context.Context) error {
	a.stopOnce.Do(func() {
		var errs []error
		httpDone := make(chan error, 1)
		if a.http != nil {
			go func() { httpDone <- a.http.Shutdown(ctx) }()
		} else {
			if a.ln != nil {
				_ = a.ln.Close() // bound, but start-up failed before serving
			}
			httpDone <- nil
		}
		if a.gw != nil {
			a.gw.Stopping() // on a store of its own, sync callers whose job waits are answered now
		}
		if a.worker != nil {
			if err := a.stopWorker(ctx); err != nil {
				errs = append(errs, fmt.Errorf("worker stop: %w", err))
			}
		}
		if a.gw != nil {
			if err := a.gw.AnswerWaiting(ctx); err != nil {
				errs = append(errs, fmt.Errorf("end waiting responses: %w", err))
			}
		}
		if err := <-httpDone; err != nil {
			if err := a.httpShutdownError(err); err != nil {
				errs = append(errs, err)
			}
			_ = a.http.Close()
		}
		// A profile being taken is cut off: it is of a process that is stopping.
		if a.pprof != nil {
			_ = a.pprof.Close()
		} else if a.pprofLn != nil {
			_ = a.pprofLn.Close() // bound, but start-up failed before serving
		}
		if a.cancel != nil {
			a.cancel()
		}
		a.waitComponents(ctx)
		if a.store != nil && a.inv != nil {
			a.stopTarget(ctx)
		}
		if a.nc != nil {
			if err := a.nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
				errs = append(errs, fmt.Errorf("nats drain: %w", err))
			}
			waitClosed(ctx, a.nc)
		}
		if a.natsSrv != nil {
			a.natsSrv.Shutdown()
		}
		a.stopErr = errors.Join(errs...)
	})
	return a.stopErr
}

// abandonCtx bounds the shutdown of a start that failed: to limit, and not at all once
// start, the start's context, has ended (the operator's stop while foreman waited for its
// NATS cluster, say). Nothing ran yet that a graceful shutdown would let finish, and
// under Background the drain of a connection to a NATS that stopped answering (a frozen
// node) held the stop for the connection's stale-ping bound, 15 s, past the Ctrl-C.
func abandonCtx(start context.Context, limit time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(start), limit)
	stop := context.AfterFunc(start, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// stopWorker stops the worker under workerDeadline. Its last store writes after that (the
// cut job handed back, a job that just ended written done) have time of their own, up to
// 20 s of retries for a terminal write: on a NATS that answers nothing (a frozen node, a
// store whose disk stalls) they held the shutdown that long past ctx's deadline, and a
// service manager's kill came first. Past ctx's deadline, and lastWritesGrace more (a
// second stop ends ctx and the worker's deadline at once: the hand-back it cuts off takes
// a round trip on a NATS that answers), the connection is closed under them, which fails
// them at once: the job's message, un-acked, comes back after its ack wait, as after a
// crash.
func (a *App) stopWorker(ctx context.Context) error {
	wctx, cancel := workerDeadline(ctx)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- a.worker.Stop(wctx) }()
	select {
	case err := <-stopped:
		return err
	case <-ctx.Done():
	}
	grace := time.NewTimer(lastWritesGrace)
	defer grace.Stop()
	select {
	case err := <-stopped:
		return err
	case <-grace.C:
	}
	if a.nc != nil {
		a.log.Warn("the worker's last store writes are cut short: the shutdown's deadline has passed")
		a.nc.Close()
	}
	return <-stopped
}

// lastWritesGrace is how long past a shutdown's deadline the worker's last store writes
// may take before the NATS connection is closed under them (stopWorker).
const lastWritesGrace = 2 * time.Second

// waitComponents waits for the background components, stopped, to return. Their last
// writes (the presence withdrawn, the webhook consumer released) wait up to 5 s each for a
// NATS that answers nothing (a frozen node, a lost link): past ctx's deadline foreman's
// connection is closed under them, which fails those writes at once, so the shutdown
// keeps to FOREMAN_SHUTDOWN_TIMEOUT.
func (a *App) waitComponents(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		a.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	if a.nc != nil {
		a.nc.Close()
	}
	<-done
}

// httpShutdownError is the error of an HTTP server's shutdown that ended with err, nil
// when it ran out of time only for connections holding no request: idle ones, or new ones
// that have sent no whole request yet (httpConns). Those are closed without a request
// lost; a request still being answered at the deadline makes the shutdown fail.
func (a *App) httpShutdownError(err error) error {
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("http shutdown: %w", err)
	}
	if n := a.conns.active(); n > 0 {
		return fmt.Errorf("http shutdown: requests still being answered (%d): %w", n, err)
	}
	a.log.Info("http shutdown: closing connections that hold no request")
	return nil
}

// workerDeadline is the part of a shutdown's deadline the running job may use: a quarter
// of what is left, at most 5s, stays for what follows it (the cut job's answer written,
// the waiting answers ended, the HTTP server closed), so that all of it ends within the
// deadline.
func workerDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	dl, ok := ctx.Deadline()
	if !ok {
		return context.WithCancel(ctx)
	}
	reserve := min(time.Until(dl)/4, 5*time.Second)
	return context.WithDeadline(ctx, dl.Add(-reserve))
}

// waitClosed waits for a draining connection to close, or for ctx.
func waitClosed(ctx context.Context, nc *nats.Conn) {
	for !nc.IsClosed() {
		select {
		case <-ctx.Done():
			nc.Close()
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// tokenNames lists the programs of named tokens, each once, for the log (never a token).
func tokenNames(ts []gateway.NamedToken) (names []string, secretLike int) {
	for _, t := range ts {
		switch {
		case secretLikeName(t.Program):
			secretLike++
		case !slices.Contains(names, t.Program):
			names = append(names, t.Program)
		}
	}
	return names, secretLike
}

// secretLikeName reports whether a program name looks like a generated token rather
// than a name a person chose: 20 or more hex digits, a dash allowed between them (openssl
// rand -hex, a UUID), or 24 or more characters mixing upper and lower case letters and
// digits and nothing else (a random base62 string). Such a name in a name:token entry is
// most likely a token written first.
func secretLikeName(name string) bool {
	var hex, upper, lower, digit, other int
	for _, r := range name {
		switch {
		case r >= '0' && r <= '9':
			digit++
			hex++
		case r >= 'a' && r <= 'f', r >= 'A' && r <= 'F':
			hex++
			if r >= 'a' {
				lower++
			} else {
				upper++
			}
		case r >= 'g' && r <= 'z':
			lower++
		case r >= 'G' && r <= 'Z':
			upper++
		case r == '-':
		default:
			other++
		}
	}
	dashes := strings.Count(name, "-")
	if hex >= 20 && hex+dashes == len(name) && digit > 0 {
		return true
	}
	return len(name) >= 24 && dashes == 0 && other == 0 && upper > 0 && lower > 0 && digit > 0
}

// natsDenial ends a start waiting on the NATS server once it refuses foreman's user.
type natsDenial struct {
	mu     sync.Mutex
	first  error
	cancel context.CancelCauseFunc
}

// watch returns ctx, ended by a refusal reported while it is watched; stop ends the watch.
func (d *natsDenial) watch(ctx context.Context) (_ context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	d.mu.Lock()
	d.cancel = cancel
	d.mu.Unlock()
	return ctx, func() {
		d.mu.Lock()
		d.cancel = nil
		d.mu.Unlock()
		cancel(nil)
	}
}

func (d *natsDenial) report(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.first == nil {
		d.first = err
	}
	if d.cancel != nil {
		d.cancel(err)
	}
}

func (d *natsDenial) err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.first
}
