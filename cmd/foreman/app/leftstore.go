package app

import (
	"context"
	"errors"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// warnLeftBehind, on FOREMAN_NATS_URL, says how many jobs the embedded server's store in
// the data directory (FOREMAN_DATA_DIR, or the default one) still holds: a foreman
// switched from the embedded server to an external NATS neither runs nor shows them,
// and without a word its operator took them for lost, or never knew (ADR-0101). The
// store is opened only when the directory holds foreman's queue, and only to count; a
// directory another foreman holds is its own business.
func (a *App) warnLeftBehind(ctx context.Context) {
	dir := a.cfg.DataDir
	if dir == "" {
		d, err := natsd.DefaultDataDir()
		if err != nil {
			return
		}
		dir = d
	}
	if !natsd.HoldsStream(dir, broker.QueueStream) {
		return
	}
	n, err := storedJobs(ctx, dir)
	switch {
	case errors.Is(err, natsd.ErrLocked):
		return // an embedded foreman runs on it
	case err != nil:
		a.log.Warn("the data directory holds the embedded NATS server's store, which foreman does not use with FOREMAN_NATS_URL; its jobs could not be counted",
			"data_dir", dir, "err", err)
	case n > 0:
		a.log.Warn("the data directory holds jobs of the embedded NATS server that foreman neither runs nor shows with FOREMAN_NATS_URL: "+
			"to run them, start foreman once without FOREMAN_NATS_URL until its queue is empty; to drop them, remove the directory",
			"data_dir", dir, "jobs", n)
	}
}

// storedJobs counts the jobs in the queue of the embedded store in dir (waiting, or cut
// short while they ran), starting a server on it for the count.
func storedJobs(ctx context.Context, dir string) (uint64, error) {
	srv, err := natsd.Start(natsd.Config{DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return 0, err
	}
	defer srv.Shutdown()
	nc, err := srv.Connect()
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, err
	}
	st, err := js.Stream(ctx, broker.QueueStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return st.CachedInfo().State.Msgs, nil
}
