package ollama

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// InventoryConfig configures NewInventory.
type InventoryConfig struct {
	Client Client
	// Interval between polls; default 30s.
	Interval time.Duration
	// PollTimeout bounds one poll so a hung target counts as degraded; default 10s.
	PollTimeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// OnRecover is called by the poll that saw it (Run's ticks or a Refresh's shared
	// poll, one poll at a time) after the first successful poll and after every
	// degraded → healthy transition (e.g. to re-warm the embedding model). It should
	// return promptly.
	OnRecover func(ctx context.Context)
	// OnPoll, when set, is called by every poll, failed or not (one poll at a time),
	// with the snapshot it left (to publish it to the other foremen). It should return
	// promptly.
	OnPoll func(ctx context.Context, snap Snapshot)
	// Remembered are the models an earlier run of foreman last polled at this target,
	// kept across the restart (ADR-0047). Until a poll of this run succeeds, HasModel and
	// Snapshot.Models answer from them as they answer from the last known list after a
	// failed poll; nothing else does: they are no /api/tags body, and the target counts as
	// neither polled nor reachable for them. The first successful poll replaces them.
	Remembered []string
	// RememberedAliases are the aliases an earlier run last read at this target (ADR-0068):
	// ResolveAlias and Snapshot.Aliases answer from them until a poll of this run reads
	// the target's own (a poll that lists the models but fails to read the aliases keeps
	// them, as it keeps the ones it read before).
	RememberedAliases []Alias
}

// Snapshot is the inventory's view of the target at its last poll.
type Snapshot struct {
	Tags     *ListResponse
	TagsRaw  []byte
	Ps       *ProcessResponse
	PsRaw    []byte
	Degraded bool
	Err      error // the last poll's error; nil after a successful poll
	LastPoll time.Time
	Polled   bool // at least one poll of this run succeeded
	// DownSince is when the target stopped answering, as far as the polls know: the
	// start of the first of the failed polls in a row whose error says it is not there
	// (Unreachable: refused, reset, no answer within PollTimeout, a proxy's 502 or 504
	// for it). Zero while it answers, even with another error status (a proxy passing
	// only the model calls).
	DownSince time.Time
	// Remembered are InventoryConfig.Remembered (normalized), until a poll succeeds: the
	// models a job may be queued for while no poll of this run has succeeded. Tags is nil
	// while they stand.
	Remembered []string
	// Aliases are the target's model aliases (AliasReader) at the last poll that read
	// them; a poll that could not keeps the ones before (before any, the remembered ones).
	Aliases []Alias
	// aliases is Aliases with the models, ready to resolve (nil without aliases).
	aliases *AliasTable
}

// DefaultPollTimeout is InventoryConfig.PollTimeout's default.
const DefaultPollTimeout = 10 * time.Second

// Inventory polls /api/tags and /api/ps and caches them. A failed poll keeps
// the last known lists and marks the target degraded until a poll succeeds.
type Inventory struct {
	cfg InventoryConfig

	// life is what a shared poll runs on: not the context of the caller who started it,
	// who may hang up while others wait for the same poll. It ends with Run.
	life  context.Context
	end   context.CancelFunc
	polls sync.WaitGroup // the shared polls in flight; Add only under mu while life lasts

	mu       sync.Mutex
	snap     Snapshot
	inflight *pollCall
	// next is the poll RefreshAfter callers wait for while inflight runs: begun as it ends.
	next *pollCall
	// aliasFailing is set while the polls fail to read the aliases (warned once).
	aliasFailing bool
}

// pollCall lets concurrent Refresh callers share one poll.
type pollCall struct {
	done chan struct{}
	err  error
}

// NewInventory fills in defaults. cfg.Client is required.
func NewInventory(cfg InventoryConfig) *Inventory {
	if cfg.Interval <= 0 {
		cfg.Interval = 30 * time.Second
	}
	if cfg.PollTimeout <= 0 {
		cfg.PollTimeout = DefaultPollTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	life, end := context.WithCancel(context.Background())
	i := &Inventory{cfg: cfg, life: life, end: end}
	for _, m := range cfg.Remembered {
		if n := NormalizeModel(m); n != "" && !slices.Contains(i.snap.Remembered, n) {
			i.snap.Remembered = append(i.snap.Remembered, n)
		}
	}
	i.snap.Aliases = slices.Clone(cfg.RememberedAliases)
	i.snap.aliases = NewAliasTable(i.snap.Aliases, i.snap.Remembered)
	return i
}

// Run polls at once and then every Interval until ctx ends; it returns nil then, once
// no shared poll is in flight, and the inventory polls no more.
// Poll failures are recorded in the snapshot, not returned.
func (i *Inventory) Run(ctx context.Context) error {
	defer i.stop()
	t := time.NewTicker(i.cfg.Interval)
	defer t.Stop()
	for {
		_ = i.Refresh(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Refresh polls the target now and returns the poll's error. A caller
// arriving while a poll is in flight waits for that poll instead of starting another.
// The poll runs on the inventory's own context, bounded by PollTimeout: a caller whose
// ctx ends gets ctx.Err() at once, and the poll goes on for the others.
func (i *Inventory) Refresh(ctx context.Context) error {
	i.mu.Lock()
	c := i.inflight
	if c == nil {
		if i.life.Err() != nil {
			i.mu.Unlock()
			return errStopped
		}
		c = &pollCall{done: make(chan struct{})}
		i.inflight = c
		i.polls.Add(1)
		go i.share(c)
	}
	i.mu.Unlock()
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RefreshAfter is Refresh with a poll begun after the call: a poll in flight began
// before it and may have read the model list before a change the caller must see (a
// model created again under its name just now). Its callers then wait for the next poll,
// which that poll's end begins: one poll more however many wait. It returns that poll's
// error.
func (i *Inventory) RefreshAfter(ctx context.Context) error {
	i.mu.Lock()
	if i.inflight == nil {
		i.mu.Unlock()
		return i.Refresh(ctx)
	}
	if i.next == nil {
		i.next = &pollCall{done: make(chan struct{})}
	}
	c := i.next
	i.mu.Unlock()
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// share runs the poll c stands for and hands its error to every caller waiting on it,
// then begins the next poll when RefreshAfter callers wait for one.
func (i *Inventory) share(c *pollCall) {
	defer i.polls.Done()
	c.err = i.poll(i.life)
	i.mu.Lock()
	i.inflight = nil
	if n := i.next; n != nil {
		i.next = nil
		if i.life.Err() != nil {
			n.err = errStopped
			close(n.done)
		} else {
			i.inflight = n
			i.polls.Add(1)
			go i.share(n)
		}
	}
	i.mu.Unlock()
	close(c.done)
}

// stop ends the polls in flight and waits for them, so none outlives Run. life ends
// under mu: a Refresh then either added its poll before, or sees life over and adds none.
func (i *Inventory) stop() {
	i.mu.Lock()
	i.end()
	i.mu.Unlock()
	i.polls.Wait()
}

func (i *Inventory) poll(ctx context.Context) error {
	if i.cfg.Client == nil {
		return errNoClient
	}
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, i.cfg.PollTimeout)
	defer cancel()
	tags, tagsRaw, err := i.cfg.Client.Tags(pctx)
	var ps *ProcessResponse
	var psRaw []byte
	if err == nil {
		ps, psRaw, err = i.cfg.Client.Ps(pctx)
	}
	var aliases []Alias
	var aliasErr error
	ar, readsAliases := i.cfg.Client.(AliasReader)
	if readsAliases && err == nil {
		// Not a condition of the target's health: an Ollama without aliases answers 404
		// (none); one whose router config cannot be read fails its chats and generates
		// with a 500 too (v0.17.4 resolveAlias), but answers its polls, lists its models
		// and serves its embeddings: it is no target that is not there.
		aliases, aliasErr = ar.Aliases(pctx)
	}
	if err != nil && ctx.Err() != nil {
		// Our own shutdown says nothing about the target's health.
		return ctx.Err()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// A target that accepts the poll and never answers (Ollama wedged as a whole).
		err = fmt.Errorf("ollama: no answer to the inventory poll within %s: %w", i.cfg.PollTimeout, err)
	}

	i.mu.Lock()
	wasDegraded, wasPolled := i.snap.Degraded, i.snap.Polled
	i.snap.LastPoll = time.Now()
	i.snap.Err = err
	switch {
	case err != nil && Unreachable(err):
		if i.snap.DownSince.IsZero() {
			i.snap.DownSince = start
		}
	default:
		i.snap.DownSince = time.Time{}
	}
	if err != nil {
		i.snap.Degraded = true
	} else {
		i.snap.Tags, i.snap.TagsRaw = tags, tagsRaw
		i.snap.Ps, i.snap.PsRaw = ps, psRaw
		i.snap.Degraded = false
		i.snap.Polled = true
		i.snap.Remembered = nil // the target's own word from now on
		if readsAliases && aliasErr == nil {
			i.snap.Aliases = aliases
		}
		i.snap.aliases = NewAliasTable(i.snap.Aliases, i.snap.Models())
	}
	// aliasErr is set only by a read, made only after a poll that answered.
	warnAliases := aliasErr != nil && !i.aliasFailing
	if err == nil {
		i.aliasFailing = aliasErr != nil
	}
	snap := i.snap
	i.mu.Unlock()
	if i.cfg.OnPoll != nil {
		i.cfg.OnPoll(ctx, snap)
	}

	if warnAliases {
		i.cfg.Logger.WarnContext(ctx, "read the target's model aliases; the last ones read stand", slog.Any("err", aliasErr))
	}
	switch {
	case err != nil:
		if !wasDegraded {
			i.cfg.Logger.WarnContext(ctx, "ollama target degraded", slog.Any("err", err))
		}
		return err
	case wasDegraded || !wasPolled:
		if wasDegraded {
			i.cfg.Logger.InfoContext(ctx, "ollama target recovered")
		}
		if i.cfg.OnRecover != nil {
			i.cfg.OnRecover(ctx)
		}
	}
	return nil
}

// Snapshot returns a copy of the current state. The pointed-to responses are
// shared and must not be modified.
func (i *Inventory) Snapshot() Snapshot {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.snap
}

// HasModel reports whether name, normalized, is in the last known /api/tags, or, before
// any poll of this run succeeded, among the remembered models.
func (i *Inventory) HasModel(name string) bool {
	want := NormalizeModel(name)
	if want == "" {
		return false
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.snap.Tags == nil {
		return slices.Contains(i.snap.Remembered, want)
	}
	for _, m := range i.snap.Tags.Models {
		if NormalizeModel(m.Name) == want || NormalizeModel(m.Model) == want {
			return true
		}
	}
	return false
}

// ResolveAlias returns the model a chat or generate call naming name runs, by the
// target's aliases at the last poll (ResolveAlias), and whether an alias applies.
func (i *Inventory) ResolveAlias(name string) (string, bool) {
	i.mu.Lock()
	t := i.snap.aliases
	i.mu.Unlock()
	return t.Resolve(name)
}

// Models returns the normalized names in the last known /api/tags, or, before any poll
// of this run succeeded, the remembered ones.
func (s Snapshot) Models() []string {
	if s.Tags == nil {
		return slices.Clone(s.Remembered)
	}
	out := make([]string, 0, len(s.Tags.Models))
	for _, m := range s.Tags.Models {
		n := m.Name
		if n == "" {
			n = m.Model
		}
		out = append(out, NormalizeModel(n))
	}
	return out
}

// Loaded returns the normalized names of the models in the last known /api/ps; none
// while the target is degraded: one down or restarting has unloaded its models, or
// says nothing of them (the last /api/ps stays in the Snapshot).
func (i *Inventory) Loaded() []string {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.snap.Degraded {
		return nil
	}
	return i.snap.PsModels()
}

// PsModels returns the normalized names of the models in the snapshot's /api/ps, however
// old (see Inventory.Loaded for what is loaded now).
func (s Snapshot) PsModels() []string {
	if s.Ps == nil {
		return nil
	}
	out := make([]string, 0, len(s.Ps.Models))
	for _, m := range s.Ps.Models {
		n := m.Name
		if n == "" {
			n = m.Model
		}
		out = append(out, NormalizeModel(n))
	}
	return out
}

// Reachable reports whether the target answered the last poll: a poll of this run
// succeeded and none has failed since. Remembered models never make it so.
func (i *Inventory) Reachable() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.snap.Polled && !i.snap.Degraded
}

// Degraded reports whether the last poll failed.
func (i *Inventory) Degraded() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.snap.Degraded
}

// SetPs replaces the cached /api/ps after a caller fetched it live.
func (i *Inventory) SetPs(ps *ProcessResponse, raw []byte) {
	if ps == nil {
		return
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.snap.Ps, i.snap.PsRaw = ps, raw
}

// errStopped answers a Refresh after Run has ended.
var errStopped = errors.New("ollama: inventory stopped")

// errNoClient guards against a zero InventoryConfig.
var errNoClient = errors.New("ollama: InventoryConfig.Client is nil")
