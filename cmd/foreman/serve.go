package main

import (
	"context"
	"errors"
	"log/slog"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/spf13/cobra"

	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

func newServeCmd(e *env) *cobra.Command {
	cfg := &serveConfig{}
	set := cfg.settings()
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run foreman: the HTTP gateway, the worker and the embedded NATS server",
		Long: "Run foreman. Every flag can also be set by its FOREMAN_* environment variable (shown in brackets);\n" +
			"a flag beats the variable.",
		Args:        cobra.NoArgs,
		Annotations: map[string]string{handlesSignals: "yes"},
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolve(cmd.Flags(), set, e.getenv); err != nil {
				return err
			}
			if err := cfg.finish(); err != nil {
				return err
			}
			// A log pipe that closes (the tee foreman ran into ended) loses log lines, not
			// the server: Go kills a process writing to a broken pipe on its standard
			// error unless SIGPIPE is handled.
			signal.Ignore(syscall.SIGPIPE)
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: cfg.LogLevel}))
			return serve(cmd.Context(), *cfg, log, e.stopNow)
		},
	}
	bindFlags(cmd.Flags(), set)
	return cmd
}

// serve runs foreman until ctx ends, then shuts down under cfg.ShutdownTimeout, or at
// once when stopNow is closed (a second SIGINT or SIGTERM) during that shutdown (or ctx
// ends, during one a failed component began): what a
// running job's caller has not received by then is cut, as past the deadline (a job
// whose end was not stored is run again at the next start, as after a kill). A nil
// stopNow never closes.
func serve(ctx context.Context, cfg serveConfig, log *slog.Logger, stopNow <-chan struct{}) error {
	a, err := app.Start(ctx, cfg.Config, log)
	if err != nil {
		if ctx.Err() != nil {
			// Stopped (SIGTERM, Ctrl-C) before it served, waiting for its NATS cluster,
			// say: the operator's stop, not a failure (exit 0; systemd does not mark the
			// unit failed).
			log.Info("stopped before foreman was serving", "err", err)
			return nil
		}
		return err
	}
	log.Info("foreman is serving", "addr", a.Addr(), "ollama", ollama.RedactURL(cfg.OllamaURL), "data_dir", a.DataDir(), "nats_listen", a.NATSListen(), "boot_id", a.BootID())
	cut := stopNow // what cuts the shutdown short
	select {
	case <-ctx.Done():
		log.Info("shutting down; stop again (Ctrl-C, SIGTERM) to cut it short", "timeout", a.Config().ShutdownTimeout)
	case err = <-a.Failed():
		// Not the operator's stop: their first one (ending ctx) means "now", as a second
		// does after their own; it did nothing before, and the shutdown waited on.
		log.Error("a component failed; shutting down; stop (Ctrl-C, SIGTERM) to cut it short", "err", err, "timeout", a.Config().ShutdownTimeout)
		cut = ctx.Done()
	}
	sctx, cancel := context.WithTimeout(context.Background(), a.Config().ShutdownTimeout)
	defer cancel()
	var wasCut atomic.Bool
	go func() {
		select {
		case <-cut:
			log.Warn("stopped during the shutdown: cutting it short")
			wasCut.Store(true)
			cancel()
		case <-sctx.Done():
		}
	}()
	return shutdownResult(err, a.Shutdown(sctx), wasCut.Load(), log)
}

// shutdownResult is serve's error after a shutdown that ended with serr: err, the failure
// that began it if one did, and what the shutdown left. A shutdown the operator cut short
// (cut) is an error whatever serr is (exit 1, as the README says): a running job the
// worker hands back at the cut leaves no error of its own, and the one component that
// may say "context canceled" (the wait for sync answers) does so only when it saw the
// cut first, so serr alone made the exit status of a cut a race. What the cut left
// undone is the log's: said as the command's error, Go's words read as a fault of
// foreman's, not the operator's own stop.
func shutdownResult(err, serr error, cut bool, log *slog.Logger) error {
	if !cut {
		return errors.Join(err, serr)
	}
	if serr != nil {
		log.Warn("the shutdown cut short left", "err", serr)
	}
	if err != nil {
		return errors.Join(err, errShutdownCutAfterFailure) // the operator's first stop cut it
	}
	return errShutdownCut
}

// errShutdownCut is serve's error when a second stop cut its shutdown short (exit 1: a
// job may have been cut); errShutdownCutAfterFailure when the operator's first stop cut
// a shutdown a failed component began.
var (
	errShutdownCut             = errors.New("shutdown cut short by a second stop: what had not ended was cut (see the log); a job whose end was not stored runs again at the next start")
	errShutdownCutAfterFailure = errors.New("shutdown cut short by a stop: what had not ended was cut (see the log); a job whose end was not stored runs again at the next start")
)
