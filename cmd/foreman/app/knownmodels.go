package app

import (
	"context"
	"slices"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// knownModelsTimeout bounds each read and write of the remembered model list: a NATS that
// does not answer holds neither the start nor a poll for longer.
const knownModelsTimeout = 5 * time.Second

// knownModelsRefresh is how old the stored list may grow before an unchanged one is
// written again: KnownModelsBucket drops an entry a job TTL after its last write, so a
// list that never changes is kept alive by a write every eighth of the TTL, and lives
// between seven eighths of a TTL and a TTL after the target last answered a poll.
func knownModelsRefresh(jobTTL time.Duration) time.Duration { return jobTTL / 8 }

// knownModels is what this process knows KnownModelsBucket holds for its target: the list
// read at start or last written. Only the start (before the inventory runs) and the
// inventory's polls (one at a time) touch it.
type knownModels struct {
	url     string
	models  []string
	aliases []ollama.Alias
	written time.Time
}

// rememberedModels reads the model list an earlier run stored for this target, and the
// aliases with it, for the inventory to answer from until its first successful poll (the
// aliases: until a poll reads the target's own; ADR-0047, ADR-0068). A list stored for
// another URL (FOREMAN_OLLAMA_URL changed), past its job TTL, or unreadable is not used;
// nothing here stops foreman from starting.
func (a *App) rememberedModels(ctx context.Context) ([]string, []ollama.Alias) {
	rctx, cancel := context.WithTimeout(ctx, knownModelsTimeout)
	defer cancel()
	k, ok, err := a.store.RememberedModels(rctx, a.cfg.TargetName)
	if err != nil {
		a.log.Warn("remembered model list not used", "target", a.cfg.TargetName, "err", err)
		return nil, nil
	}
	if !ok {
		return nil, nil
	}
	if url := publishedURL(a.cfg.OllamaURL); k.URL != url {
		// Another Ollama's models say nothing about this one's; the first poll that
		// succeeds stores this one's over them.
		a.log.Info("remembered model list is of another target URL; not used", "target", a.cfg.TargetName,
			"url", url, "remembered_url", shorten(ollama.RedactURL(k.URL), 200))
		return nil, nil
	}
	// Its age is on the server's clock, which stamped it; kept as a time of this host's
	// (with its monotonic reading), as a list this foreman stores is (rememberModels).
	a.known = knownModels{url: k.URL, models: k.Models, aliases: k.Aliases, written: time.Now().Add(-a.store.ServerNow().Sub(k.Written))}
	a.log.Info("remembered model list stands until the target answers a poll", "target", a.cfg.TargetName,
		"models", len(k.Models), "aliases", len(k.Aliases), "written", k.Written)
	return k.Models, k.Aliases
}

// rememberModels is part of the inventory's OnPoll: it stores the model list of a
// successful poll, with the aliases, when either differs from the ones stored (or the URL
// does), or when the stored one is knownModelsRefresh old, bounded by
// knownModelsTimeout. A failed write is logged, and the next successful poll tries again.
func (a *App) rememberModels(ctx context.Context, snap ollama.Snapshot) {
	if snap.Err != nil || !snap.Polled {
		return
	}
	models := snap.Models()
	slices.Sort(models)
	models = slices.Compact(models)
	url := publishedURL(a.cfg.OllamaURL)
	now := time.Now()
	k := a.known
	if !k.written.IsZero() && k.url == url && slices.Equal(k.models, models) && slices.Equal(k.aliases, snap.Aliases) &&
		now.Sub(k.written) < knownModelsRefresh(a.cfg.JobTTL) {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, knownModelsTimeout)
	defer cancel()
	if err := a.store.RememberModels(wctx, broker.KnownModels{Name: a.cfg.TargetName, URL: url, Models: models, Aliases: snap.Aliases}); err != nil {
		if ctx.Err() == nil {
			a.rememberFails.Failed(a.log, "remember the target's model list", err, "target", a.cfg.TargetName)
		}
		return
	}
	a.rememberFails.Worked(a.log, "remember the target's model list")
	a.known = knownModels{url: url, models: models, aliases: snap.Aliases, written: now}
}

// shorten cuts s to at most n bytes, for a log line quoting what another process wrote.
func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
