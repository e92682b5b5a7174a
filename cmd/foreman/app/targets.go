package app

import (
	"bytes"
	"context"
	"encoding/json"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// DefaultTargetName is FOREMAN_TARGET_NAME's default: the host name ("ollama" when the
// system does not tell it), as a valid name (targetNameOf).
func DefaultTargetName() string {
	h, _ := os.Hostname()
	return targetNameOf(h)
}

// maxTargetName is the longest FOREMAN_TARGET_NAME.
const maxTargetName = 64

// targetNameOf is host as a target name: 1 to 64 letters, digits, '.', '-' or '_', any
// other character a '-', cut at 64 characters. A default the operator never set must
// not stop foreman: a host name may be longer (a macOS one: up to 255), or hold other
// characters; "ollama" when nothing is left.
func targetNameOf(host string) string {
	b := []byte(strings.Trim(host, "."))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			b[i] = '-'
		}
	}
	name := strings.Trim(string(b[:min(len(b), maxTargetName)]), ".-")
	if name == "" {
		return "ollama"
	}
	return name
}

// targetTTL is how long a target's entry outlives its last poll: three polls, so one
// slow or missed poll does not make the target vanish, and at least one poll of a hung
// target (it ends only at the poll's timeout) and two intervals: with a short interval a
// hung Mac's entry came and went, and its models were "not found" in the gaps.
func targetTTL(poll time.Duration) time.Duration {
	return max(3*poll, ollama.DefaultPollTimeout+2*poll, 5*time.Second)
}

// onPoll is the inventory's OnPoll: the other foremen learn what the target has, and the
// next start of this one what it had.
func (a *App) onPoll(ctx context.Context, snap ollama.Snapshot) {
	a.publishTarget(ctx, snap)
	a.rememberModels(ctx, snap)
}

// publishSpacing is the least time between two publishes of an unchanged target entry.
// A poll made on demand (a refusal confirmed against the model list, ADR-0129; a call
// for a model the list lacks) may come with each call of a flood, and each publish is a
// synced write of the entry (its /api/tags and /api/ps bodies: kilobytes) and two reads
// of the targets' bucket; the entry lives three poll intervals, so a second more of its
// age changes nothing.
const publishSpacing = time.Second

// publishedTarget is a target entry as published, and when.
type publishedTarget struct {
	entry []byte // the entry's JSON, without the store's stamps
	at    time.Time
}

// publishTarget tells every foreman on the NATS what this target has and has loaded
// (ADR-0029). Before a poll of this run succeeded, its models are the remembered ones,
// published unreachable as after a failed poll: the other foremen then queue jobs for
// them, as this one does, and leave them to run here (ADR-0047). An entry published
// unchanged within publishSpacing is not published again (nor the others read).
func (a *App) publishTarget(ctx context.Context, snap ollama.Snapshot) {
	t := a.targetOf(snap)
	entry := entryKey(t)
	now := time.Now()
	if bytes.Equal(entry, a.published.entry) && now.Sub(a.published.at) < publishSpacing {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := a.store.PublishTarget(pctx, t); err == nil {
		a.published = publishedTarget{entry: entry, at: now}
		a.publishFails.Worked(a.log, "publish target inventory")
	} else if ctx.Err() == nil {
		a.publishFails.Failed(a.log, "publish target inventory", err, "target", t.Name)
	}
	a.targetEndpoints(pctx) // learn the other targets at each poll, not only when a webhook dials
	a.pruneClients(pctx)
}

// entryKey is target entry t as compared with the one last published: its lists in any
// order, as Ollama lists models of the same modified_at in an order of its own from one
// poll to the next.
func entryKey(t broker.Target) []byte {
	t.Models, t.Loaded = slices.Sorted(slices.Values(t.Models)), slices.Sorted(slices.Values(t.Loaded))
	t.Tags, t.Ps = sortedModels(t.Tags), sortedModels(t.Ps)
	b, _ := json.Marshal(t) // a Target always marshals
	return b
}

// sortedModels is an /api/tags or /api/ps body with its models in byte order; raw when
// it does not parse.
func sortedModels(raw json.RawMessage) json.RawMessage {
	var body map[string]json.RawMessage
	var models []json.RawMessage
	if json.Unmarshal(raw, &body) != nil || json.Unmarshal(body["models"], &models) != nil {
		return raw
	}
	slices.SortFunc(models, func(a, b json.RawMessage) int { return bytes.Compare(a, b) })
	body["models"], _ = json.Marshal(models)
	out, _ := json.Marshal(body)
	return out
}

// targetOf is this foreman's target entry as poll snap finds it.
func (a *App) targetOf(snap ollama.Snapshot) broker.Target {
	t := broker.Target{
		Name: a.cfg.TargetName, URL: publishedURL(a.cfg.OllamaURL),
		Reachable: snap.Polled && !snap.Degraded, DownSince: snap.DownSince, Models: snap.Models(),
		Tags: snap.TagsRaw, Ps: snap.PsRaw,
	}
	if webhook.LocalURL(t.URL) {
		t.Addrs = webhook.MachineAddrs() // see webhook.EndpointsOf
	}
	if snap.Degraded {
		t.Ps = nil // a target down or restarting has nothing loaded (Inventory.Loaded)
	} else if snap.Ps != nil {
		t.Loaded = snap.PsModels()
	}
	return t
}

// publishedURL is the target's URL as the other foremen call it: without userinfo (they
// use their own FOREMAN_OLLAMA_TOKEN), since the bucket is readable by every foreman.
func publishedURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return ollama.RedactURL(raw)
	}
	u.User = nil
	return u.String()
}

// targetEndpoints is the webhook policy's ProtectedSource: the endpoints (host:port) of
// every target live in the bucket (endpointsOf), the other foremen's too, and of every target seen there before
// (learned at each inventory poll as well as at each webhook's dial). No webhook may
// reach another Mac's Ollama any more than this one's: a state event names a model, so a
// POST of it to /api/generate or /api/pull would load or pull that model outside the
// queue. An entry leaves the bucket while its foreman is gone (it lapses after a kill,
// or after a stop that no start followed, ADR-0075), and its Mac's Ollama is no less reachable then: so a target
// seen stays protected for this process's life (at most maxRememberedTargets of those no
// longer live). While the bucket cannot be read, the last live and those seen stand.
func (a *App) targetEndpoints(ctx context.Context) []string {
	all, err := a.store.Targets(ctx)
	a.endpointsMu.Lock()
	defer a.endpointsMu.Unlock()
	if err == nil {
		live := endpointsOf(all)
		for _, ep := range a.liveEndpoints {
			if !slices.Contains(live, ep) && !slices.Contains(a.seenEndpoints, ep) {
				a.seenEndpoints = append(a.seenEndpoints, ep)
				if len(a.seenEndpoints) > maxRememberedTargets {
					a.seenEndpoints = a.seenEndpoints[1:] // the longest gone first
				}
			}
		}
		a.liveEndpoints = live
	}
	out := slices.Clone(a.liveEndpoints)
	for _, ep := range a.seenEndpoints {
		if !slices.Contains(out, ep) {
			out = append(out, ep)
		}
	}
	return out
}

// endpointsOf is the endpoints of targets, each once: a target published at a loopback
// URL also on its machine's published addresses (webhook.EndpointsOf).
func endpointsOf(targets []broker.Target) []string {
	out := make([]string, 0, len(targets))
	for _, t := range targets {
		eps, _ := webhook.EndpointsOf(t.URL, t.Addrs)
		for _, ep := range eps {
			if !slices.Contains(out, ep) {
				out = append(out, ep)
			}
		}
	}
	return out
}

// maxRememberedTargets bounds the endpoints targetEndpoints remembers once they are no
// longer live: far more than one NATS's Macs have (a target at a loopback URL brings its
// machine's addresses, up to 64), and a bound on what a bucket others write to can make
// this process hold.
const maxRememberedTargets = 4096

// stopTarget marks this target's entry unreachable, nothing loaded, when foreman stops in
// order (ADR-0075): the others stop routing calls to its Ollama at once, and go on
// queueing jobs for the models only it has, which it runs once it is back (a restart, an
// upgrade), rather than answer them Ollama's 404 meanwhile. A foreman stopped for good
// leaves an entry that lapses as a dead one's does (FOREMAN_POLL_INTERVAL × 3, at least
// 10 s and two intervals); so does the entry of one whose shutdown deadline (ctx) has
// passed, or passes during the write.
func (a *App) stopTarget(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	t := a.targetOf(a.inv.Snapshot())
	t.Reachable, t.Loaded, t.Ps = false, nil, nil
	if t.DownSince.IsZero() {
		t.DownSince = time.Now()
	}
	if err := a.store.StopTarget(ctx, t); err != nil {
		a.log.Warn("mark target inventory stopped", "target", a.cfg.TargetName, "err", err)
	}
}

// runsModel is the worker's Config.Runs: a model its own target has, or, on a store of
// its own (the embedded server), any model (one foreman runs every job, as it always
// has). On a shared NATS a model the own target lacks is left to the others, and one no
// live target has waits in the queue, even while no other foreman is live: the one whose
// Mac has it may be restarting, and run here the job could only fail. While the own
// target is down (or has not answered a poll yet: its models may be remembered ones), a
// model another reachable target has is left to that one.
func (a *App) runsModel(ctx context.Context, model string) bool {
	has := a.inv.HasModel(model)
	if has && a.inv.Reachable() {
		return true
	}
	all, err := a.store.Targets(ctx)
	if err != nil {
		return has || a.store.Config().Exclusive // as without other foremen
	}
	others, elsewhere := len(a.others(all)) > 0, a.offeredIn(all, model)
	switch {
	case !others:
		return has || a.store.Config().Exclusive
	case has:
		return !elsewhere
	}
	return false
}

// offeredElsewhere is the worker's Config.Elsewhere: another live foreman's target,
// reachable, lists model (ADR-0066); live also by its presence (ADR-0024), which lapses
// sooner after a kill than its entry does (an entry of a foreman from before boot ids
// counts as it is). Never on a store of its own, nor when the targets cannot be read: a
// job is then run here as before.
func (a *App) offeredElsewhere(ctx context.Context, model string) bool {
	if a.store.Config().Exclusive {
		return false
	}
	all, err := a.store.Targets(ctx)
	if err != nil {
		return false
	}
	want := ollama.NormalizeModel(model)
	for _, t := range a.others(all) {
		if t.Reachable && t.HasModel(want) && (t.BootID == "" || a.store.Present(ctx, t.BootID)) {
			return true
		}
	}
	return false
}

// others are the live targets of other foremen among all.
func (a *App) others(all []broker.Target) []broker.Target {
	var out []broker.Target
	for _, t := range all {
		if t.Name != a.cfg.TargetName {
			out = append(out, t)
		}
	}
	return out
}

// offeredIn reports whether another foreman's reachable target among all lists model.
func (a *App) offeredIn(all []broker.Target, model string) bool {
	want := ollama.NormalizeModel(model)
	for _, t := range a.others(all) {
		if t.Reachable && t.HasModel(want) {
			return true
		}
	}
	return false
}

// targetClient returns the client for another foreman's target, by URL, built on first
// use with this foreman's Ollama token.
func (a *App) targetClient(url string) (ollama.Client, error) {
	a.clientsMu.Lock()
	defer a.clientsMu.Unlock()
	if c, ok := a.clients[url]; ok {
		return c, nil
	}
	c, err := ollama.NewClient(ollama.ClientConfig{BaseURL: url, Token: a.cfg.OllamaToken, ResponseHeaderTimeout: -1, Logger: a.log})
	if err != nil {
		return nil, err
	}
	if a.clients == nil {
		a.clients = map[string]*ollama.HTTPClient{}
	}
	a.clients[url] = c
	return c, nil
}

// pruneClients drops the clients of URLs no live target has any more (an entry lapsed,
// a Mac whose address changed), closing their idle connections: each keeps a
// transport and up to 16 idle sockets, and without this one stayed for every URL ever
// published. A request under way on a dropped client ends as it would have (only idle
// connections are closed); one begun after is given a new client. While the bucket
// cannot be read, every client stays.
func (a *App) pruneClients(ctx context.Context) {
	all, err := a.store.Targets(ctx)
	if err != nil {
		return
	}
	var gone []*ollama.HTTPClient
	a.clientsMu.Lock()
	for url, c := range a.clients {
		if !slices.ContainsFunc(all, func(t broker.Target) bool { return t.URL == url }) {
			delete(a.clients, url)
			gone = append(gone, c)
		}
	}
	a.clientsMu.Unlock()
	for _, c := range gone {
		c.CloseIdleConnections()
	}
}
