package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

func newServeCmd(e *env) *cobra.Command {
	cfg := &serveConfig{}
	set := cfg.settings()
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run foreman: the HTTP gateway, the worker and the embedded NATS server",
		Long: "Run foreman. Every flag can also be set by its FOREMAN_* environment variable (shown in brackets);\n" +
			"a flag beats the variable.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolve(cmd.Flags(), set, e.getenv); err != nil {
				return err
			}
			if err := cfg.finish(); err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: cfg.LogLevel}))
			return serve(cmd.Context(), *cfg, log)
		},
	}
	bindFlags(cmd.Flags(), set)
	return cmd
}

// serve runs foreman until ctx ends, then shuts down under cfg.ShutdownTimeout.
func serve(ctx context.Context, cfg serveConfig, log *slog.Logger) error {
	a, err := startApp(ctx, cfg, log)
	if err != nil {
		return err
	}
	log.Info("foreman is serving", "addr", a.Addr(), "ollama", ollama.RedactURL(cfg.OllamaURL), "data_dir", a.dataDir, "nats_listen", a.natsListen(), "boot_id", a.bootID)
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-a.failed:
		log.Error("a component failed; shutting down", "err", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if serr := a.shutdown(sctx); serr != nil {
		err = errors.Join(err, serr)
	}
	return err
}

// app is a running foreman: everything serve starts, in the order shutdown stops it.
type app struct {
	cfg     serveConfig
	log     *slog.Logger
	dataDir string
	bootID  string
	natsSrv *natsd.Server // nil with an external NATS
	nc      *nats.Conn
	store   *broker.Store
	target  *ollama.HTTPClient
	inv     *ollama.Inventory
	gw      *gateway.Server
	worker  *worker.Worker
	http    *http.Server
	ln      net.Listener

	cancel   context.CancelFunc // stops the background components
	wg       sync.WaitGroup
	failed   chan error
	stopOnce sync.Once
	stopErr  error
}

func startApp(ctx context.Context, cfg serveConfig, log *slog.Logger) (_ *app, err error) {
	a := &app{cfg: cfg, log: log, failed: make(chan error, 8)}
	defer func() {
		if err != nil {
			a.shutdown(context.Background())
		}
	}()
	if err := a.startNATS(); err != nil {
		return nil, err
	}
	// A new boot id at every start tells this process's sync callers from those of a
	// crashed one; the embedded server's data-dir lock makes the store ours alone.
	a.bootID = broker.NewID()
	a.store, err = broker.Open(ctx, broker.Config{
		Conn: a.nc, JobTTL: cfg.JobTTL, MaxQueue: int64(cfg.MaxQueue), MaxAttempts: cfg.MaxAttempts, AckWait: cfg.AckWait,
		Replicas: cfg.NATSReplicas, BootID: a.bootID, Exclusive: a.natsSrv != nil, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	a.target, err = ollama.NewClient(ollama.ClientConfig{BaseURL: cfg.OllamaURL, Token: cfg.OllamaToken, ResponseHeaderTimeout: -1, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("FOREMAN_OLLAMA_URL=%q: %w", ollama.RedactURL(cfg.OllamaURL), err)
	}
	a.inv = ollama.NewInventory(ollama.InventoryConfig{
		Client: a.target, Interval: cfg.PollInterval, Logger: log, OnRecover: a.warmEmbedder,
	})
	// Bind before anything runs: a taken port then fails start-up with nothing to undo,
	// and the gateway's Host check needs the address really bound.
	a.ln, err = net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("FOREMAN_ADDR=%q: %w", cfg.Addr, err)
	}
	if cfg.AuthToken == "" && !loopbackAddr(cfg.Addr) {
		log.Warn("INSECURE: foreman serves a non-loopback address without FOREMAN_AUTH_TOKEN " +
			"(FOREMAN_INSECURE_NO_AUTH=true): anyone who reaches " + cfg.Addr + " can queue work and read every job's result")
	}
	policy := webhookPolicy(cfg, a.ln.Addr().String(), a.natsListenAddr())
	a.gw, err = gateway.New(gateway.Config{
		Store: a.store, Target: a.target, TargetURL: ollama.RedactURL(cfg.OllamaURL), Inventory: a.inv,
		AuthToken: cfg.AuthToken, MaxBodyBytes: cfg.MaxBodyBytes, NATSHealth: a.natsHealth, Logger: log,
		TargetHealth: a.targetHealth,
		ListenAddr:   a.ln.Addr().String(), Origins: cfg.Origins,
		BodyReadTimeout: cfg.BodyReadTimeout, WriteTimeout: cfg.WriteTimeout, StreamBuffer: cfg.StreamBuffer,
		WebhookPolicy: policy,
	})
	if err != nil {
		return nil, err
	}

	a.worker, err = worker.New(worker.Config{
		Store: a.store, Target: a.target, Inventory: a.inv, MaxAttempts: cfg.MaxAttempts,
		MaxConsecutive: cfg.MaxConsecutive, MaxWait: cfg.MaxWait, Logger: log,
		FirstByteTimeout: cfg.FirstByteTimeout, StreamIdleTimeout: cfg.StreamIdleTimeout, MaxJobTime: cfg.MaxJobTime,
	})
	if err != nil {
		return nil, err
	}

	bg, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.goRun("inventory", func() error { return a.inv.Run(bg) })
	a.goRun("worker", func() error { return a.worker.Run(bg) })
	a.goRun("presence", func() error { return a.store.Announce(bg) })

	// Webhook fan-out and job submission over NATS request/reply.
	hooks, err := webhook.New(webhook.Config{
		Store: a.store, Secret: cfg.WebhookSecret, Attempts: cfg.WebhookAttempts, Policy: policy, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	a.goRun("webhooks", func() error { return hooks.Run(bg) })
	a.goRun("nats-submit", func() error { return a.gw.RunNATSSubmit(bg) })

	a.http = &http.Server{
		Handler:           a.gw,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// No ReadTimeout/WriteTimeout: a streamed generation may last many minutes.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	a.goRun("http", func() error {
		if err := a.http.Serve(a.ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	return a, nil
}

// webhookPolicy is the webhook network policy (ADR-0021): the configured ranges, and
// foreman's target and its own HTTP address protected.
func webhookPolicy(cfg serveConfig, own ...string) webhook.Policy {
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
func (a *app) natsListenAddr() string {
	if a.natsSrv == nil {
		return ""
	}
	u, err := url.Parse(a.natsSrv.ClientURL())
	if err != nil {
		return ""
	}
	return u.Host
}

func (a *app) startNATS() error {
	if a.cfg.NATSURL != "" {
		nc, err := nats.Connect(a.cfg.NATSURL, nats.Name("foreman"), nats.MaxReconnects(-1))
		if err != nil {
			return fmt.Errorf("FOREMAN_NATS_URL=%q: %w", redactURLs(a.cfg.NATSURL), hideUserinfo(err, a.cfg.NATSURL))
		}
		a.nc = nc
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
	if err != nil {
		return err
	}
	a.natsSrv = srv
	a.nc, err = srv.Connect()
	return err
}

// hideUserinfo returns err with the credentials of every URL in list (comma-separated)
// replaced by "xxxxx" in its message, for errors of libraries that might quote the URL
// they were given (url.Parse's do). errors.Is and errors.As still see err.
func hideUserinfo(err error, list string) error {
	msg := err.Error()
	for _, raw := range strings.Split(list, ",") {
		raw = strings.TrimSpace(raw)
		if shown := ollama.RedactURL(raw); shown != raw {
			msg = strings.ReplaceAll(msg, raw, shown)
		}
		if !strings.Contains(raw, "://") {
			raw = "nats://" + raw
		}
		u, perr := url.Parse(raw)
		if perr != nil || u.User == nil {
			continue
		}
		secret, ok := u.User.Password()
		if !ok {
			secret = u.User.Username() // a token
		}
		for _, s := range []string{u.User.String(), secret} {
			if s != "" {
				msg = strings.ReplaceAll(msg, s, "xxxxx")
			}
		}
	}
	if msg == err.Error() {
		return err
	}
	return &redactedError{msg: msg, err: err}
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// goRun runs a long-lived component; an early error from it stops foreman.
func (a *app) goRun(name string, fn func() error) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := fn(); err != nil {
			a.failed <- fmt.Errorf("%s: %w", name, err)
		}
	}()
}

// Addr is the HTTP listener's address.
func (a *app) Addr() string { return a.ln.Addr().String() }

func (a *app) natsListen() string {
	if a.natsSrv == nil {
		return ""
	}
	return a.natsSrv.ClientURL()
}

func (a *app) natsHealth() error {
	if a.natsSrv != nil {
		if err := a.natsSrv.Healthy(); err != nil {
			return err
		}
	}
	if !a.nc.IsConnected() {
		return errors.New("not connected to NATS")
	}
	return nil
}

// targetHealth reports a target the worker saw stall (/healthz).
func (a *app) targetHealth() error {
	if a.worker == nil {
		return nil
	}
	return a.worker.TargetStall()
}

// warmEmbedder loads FOREMAN_EMBED_MODEL with keep_alive -1 at start and after the target
// recovers, so embeddings never wait for a load.
func (a *app) warmEmbedder(ctx context.Context) {
	if a.cfg.EmbedModel == "" {
		return
	}
	body := fmt.Appendf(nil, `{"model":%q,"input":"","keep_alive":-1}`, a.cfg.EmbedModel)
	// Bounded like a job: a hung target must not hold the inventory's poll loop, which
	// runs this, forever.
	limits := []ollama.StreamOption{ollama.FirstByteTimeout(a.cfg.FirstByteTimeout), ollama.IdleTimeout(a.cfg.StreamIdleTimeout)}
	if _, err := a.target.Stream(ctx, "/api/embed", body, func([]byte) error { return nil }, limits...); err != nil {
		a.log.Warn("warm embedding model", "model", a.cfg.EmbedModel, "err", err)
		return
	}
	a.log.Info("embedding model loaded and kept warm", "model", a.cfg.EmbedModel)
}

// shutdown stops foreman in order under ctx's deadline:
//  1. stop accepting HTTP (in-flight responses go on) and stop the worker taking jobs; the
//     running job may finish until the deadline, else it goes back to the queue un-acked;
//  2. end the responses still waiting for a job that will not run now (503, job canceled)
//     and let the HTTP server finish;
//  3. stop the background components, drain the NATS connection, shut the embedded
//     server down.
//
// Safe to call twice.
func (a *app) shutdown(ctx context.Context) error {
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
		if a.worker != nil {
			if err := a.worker.Stop(ctx); err != nil {
				errs = append(errs, fmt.Errorf("worker stop: %w", err))
			}
		}
		if a.gw != nil {
			// A little time of its own: the answers are short, and the deadline may be gone.
			ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			if err := a.gw.AnswerWaiting(ectx); err != nil {
				errs = append(errs, fmt.Errorf("end waiting responses: %w", err))
			}
			cancel()
		}
		if err := <-httpDone; err != nil {
			errs = append(errs, fmt.Errorf("http shutdown: %w", err))
			_ = a.http.Close()
		}
		if a.cancel != nil {
			a.cancel()
		}
		a.wg.Wait()
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
