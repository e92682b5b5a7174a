package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// embedKind is the kind of a queued job for an embedding route (ADR-0053).
func embedKind(path string) (broker.Kind, bool) {
	switch path {
	case "/api/embed":
		return broker.KindEmbed, true
	case "/api/embeddings":
		return broker.KindEmbeddings, true
	case "/v1/embeddings":
		return broker.KindOpenAIEmbeddings, true
	}
	return "", false
}

// embeds reports whether kind is an embedding route's (embedKind).
func embeds(kind broker.Kind) bool {
	switch kind {
	case broker.KindEmbed, broker.KindEmbeddings, broker.KindOpenAIEmbeddings:
		return true
	}
	return false
}

// capsTTL is how long a model's capabilities are remembered: a model pulled again under
// its name may have changed, which a look now and then finds.
const capsTTL = 10 * time.Minute

// maxCapsEntries is how many models' capabilities modelCaps holds before it drops those
// of models the own target lists no more: far more than a Mac has installed.
const maxCapsEntries = 512

// showTimeout bounds the /api/show call that reads a model's capabilities.
const showTimeout = 5 * time.Second

// modelCaps remembers which models are embedding models, by normalized name; calls that
// find a look-up under way wait for it. Only models a target lists are looked up; once it
// holds maxCapsEntries, those of models the own target lists no more are dropped
// (capsRoom), so model names made and removed again (an `ollama cp` and `ollama rm` of
// a new name, as often as a caller likes) do not each stay for the process's life.
type modelCaps struct {
	mu sync.Mutex
	m  map[string]*capsEntry
	// rereads are the re-reads under way beside m's entries (capsReread).
	rereads map[string]*capsEntry
}

type capsEntry struct {
	ready chan struct{} // closed once caps and err are set
	caps  []string      // the model's capabilities, as /api/show lists them
	// remote: /api/show names a remote host and model (a cloud model), to which Ollama's
	// chat and generate handlers send a call before they check it against caps.
	remote bool
	err    error
	at     time.Time
	// digest is the model's digest in the own target's model list when it was looked up
	// ("" for a model the list lacks): another there now is another model under the name
	// (pulled or created again), whose capabilities these are not (modelDigest).
	digest string
	// refreshing: a look-up of knownCapabilities reads them again in the background.
	refreshing atomic.Bool
}

// queuesEmbedding reports whether an embedding call for model runs as a job of model's
// queue rather than straight at the target (ADR-0053): a reachable target has the model
// (the own one first, else another Mac's), and it is no embedding model there (its
// /api/show lists no "embedding" capability). Ollama runs
// such a call on a chat model too, loading it (or reloading it with the call's options,
// or unloading it with keep_alive 0) beside the worker's jobs: the swaps the queue keeps
// apart. A model whose capabilities cannot be read is called straight, as before.
func (s *Server) queuesEmbedding(ctx context.Context, model string) bool {
	caps, err := s.capabilities(ctx, model)
	if err != nil {
		// No target has it: relayModel answers so. The caller left: the relay meets its
		// context. A failed look-up: called straight, as before capabilities were read.
		if ctx.Err() == nil && !errors.Is(err, errNoTargetHasIt) {
			s.log.Debug("read a model's capabilities; its embedding call goes straight to the target", "model", model, "err", err)
		}
		return false
	}
	return !slices.Contains(caps, "embedding")
}

// capabilities are model's capabilities as a reachable target that has it (the own one
// first, else another Mac's) lists them in /api/show, remembered for capsTTL or until
// the model changes under its name (modelDigest); err says why they are not known (no
// target has the model, the look-up failed, the caller left).
func (s *Server) capabilities(ctx context.Context, model string) ([]string, error) {
	caps, _, err := s.capabilitiesAndPlace(ctx, model)
	return caps, err
}

// capabilitiesAndPlace are capabilities with whether model is a remote (cloud) one, whose
// calls Ollama sends on to the remote host before its own checks.
func (s *Server) capabilitiesAndPlace(ctx context.Context, model string) (caps []string, remote bool, err error) {
	e, err := s.capsLookUp(ctx, model)
	if err != nil {
		return nil, false, err
	}
	return e.caps, e.remote, e.err
}

// capsLookUp is capabilities' entry for model, ready. err is only why the entry is not
// had (no target has the model, the caller left): the look-up's own failure is the
// entry's.
func (s *Server) capsLookUp(ctx context.Context, model string) (*capsEntry, error) {
	target, err := s.capsTarget(ctx, model)
	if err != nil {
		return nil, err
	}
	name, digest := ollama.NormalizeModel(model), s.modelDigest(model)
	s.capsRoom()
	s.caps.mu.Lock()
	e := s.caps.m[name]
	if e == nil || e.stale() || e.done() && e.digest != digest {
		e = &capsEntry{ready: make(chan struct{}), digest: digest}
		if s.caps.m == nil {
			s.caps.m = map[string]*capsEntry{}
		}
		s.caps.m[name] = e
		s.caps.mu.Unlock()
		s.lookUpCaps(ctx, name, e, target, model)
	} else {
		s.caps.mu.Unlock()
	}
	return e.wait(ctx)
}

// capsReread reads model's capabilities again from /api/show, however fresh the
// cache's answer (confirmCapabilities, for a model only another Mac has, whose digest
// tells nothing here). It runs beside the cache's entry, which serves the other calls
// meanwhile, and replaces it once it succeeds, as a background refresh does
// (refreshCaps); a failed one leaves it. Confirms at once share one re-read. err is
// only why the answer is not had (no target has the model, the caller left).
func (s *Server) capsReread(ctx context.Context, model string) (*capsEntry, error) {
	target, err := s.capsTarget(ctx, model)
	if err != nil {
		return nil, err
	}
	name := ollama.NormalizeModel(model)
	s.capsRoom()
	s.caps.mu.Lock()
	e := s.caps.rereads[name]
	if e == nil {
		e = &capsEntry{ready: make(chan struct{}), digest: s.modelDigest(model)}
		if s.caps.rereads == nil {
			s.caps.rereads = map[string]*capsEntry{}
		}
		s.caps.rereads[name] = e
		s.caps.mu.Unlock()
		// On no caller's context, as lookUpCaps: the others waiting must not meet its hang-up.
		e.caps, e.remote, e.err = showCapabilities(context.WithoutCancel(ctx), target, model)
		e.at = time.Now()
		close(e.ready)
		s.caps.mu.Lock()
		delete(s.caps.rereads, name)
		if e.err == nil || errors.Is(e.err, errNoCapabilities) {
			if s.caps.m == nil {
				s.caps.m = map[string]*capsEntry{}
			}
			s.caps.m[name] = e
		}
		s.caps.mu.Unlock()
	} else {
		s.caps.mu.Unlock()
	}
	return e.wait(ctx)
}

// capsTarget is the target whose /api/show tells model's capabilities: the own one when
// it has the model, else another Mac's that has it (its Ollama is asked, and the job
// runs on a worker whose Mac has the model, ADR-0029).
func (s *Server) capsTarget(ctx context.Context, model string) (ollama.Client, error) {
	if s.inv.HasModel(model) {
		return s.target, nil
	}
	if target := s.otherClient(ctx, model); target != nil {
		return target, nil
	}
	return nil, errNoTargetHasIt
}

// knownCapabilities is capabilities for a call on the chat and generate routes, the hot
// path (ADR-0129): capabilities once read serve however old they are, and once older
// than capsTTL one look-up at a time reads them again in the background. Only the first
// call for a model waits for its /api/show, and the first after the model changed under
// its name (its digest in the model list is another), not the first of every capsTTL (an
// /api/show of a large model takes a real Ollama tens of milliseconds).
func (s *Server) knownCapabilities(ctx context.Context, model string) ([]string, error) {
	name := ollama.NormalizeModel(model)
	s.caps.mu.Lock()
	e := s.caps.m[name]
	s.caps.mu.Unlock()
	if e == nil || !e.done() || e.digest != s.modelDigest(model) {
		return s.capabilities(ctx, model)
	}
	if e.stale() && e.refreshing.CompareAndSwap(false, true) {
		go s.refreshCaps(context.WithoutCancel(ctx), name, model, e)
	}
	return e.caps, e.err
}

// cachedCapabilities are model's capabilities as the cache holds them from a look-up that
// succeeded, however old, with no look-up of their own: ok is false while none did, and
// when the model changed under its name since (modelDigest).
// remote says the model is a remote one (capsEntry.remote).
func (s *Server) cachedCapabilities(model string) (caps []string, remote, ok bool) {
	s.caps.mu.Lock()
	e := s.caps.m[ollama.NormalizeModel(model)]
	s.caps.mu.Unlock()
	if e == nil || !e.done() || e.err != nil || e.digest != s.modelDigest(model) {
		return nil, false, false
	}
	return e.caps, e.remote, true
}

// modelDigest is model's digest in the own target's model list at its last poll, "" when
// the list lacks it (or is not read yet): a model pulled or created again under its name
// gets another, with maybe other capabilities (a template with tools, a thinking
// parser). Another Mac's model keeps "" (its capabilities are read again every capsTTL).
func (s *Server) modelDigest(model string) string {
	tags := s.inv.Snapshot().Tags
	if tags == nil {
		return ""
	}
	want := ollama.NormalizeModel(model)
	for _, m := range tags.Models {
		if ollama.NormalizeModel(m.Name) == want || ollama.NormalizeModel(m.Model) == want {
			return m.Digest
		}
	}
	return ""
}

// capsRoom drops, once the cache holds Config.capsMax entries, the ended look-ups of
// models the own target lists no more (removed, or only another Mac's, whose are read
// again every capsTTL anyway): a call for one looks it up again. The own target's
// models stay, however many. The inventory is asked with the cache unlocked.
func (s *Server) capsRoom() {
	s.caps.mu.Lock()
	if len(s.caps.m) < s.cfg.capsMax {
		s.caps.mu.Unlock()
		return
	}
	names := slices.Collect(maps.Keys(s.caps.m))
	s.caps.mu.Unlock()
	names = slices.DeleteFunc(names, s.inv.HasModel)
	s.caps.mu.Lock()
	defer s.caps.mu.Unlock()
	for _, name := range names {
		if e := s.caps.m[name]; e != nil && e.done() {
			delete(s.caps.m, name)
		}
	}
}

// refreshCaps reads model's capabilities again for its entry old (knownCapabilities),
// which serves until the new answer replaces it; a failed look-up leaves it, for a later
// call to try again.
func (s *Server) refreshCaps(ctx context.Context, name, model string, old *capsEntry) {
	defer old.refreshing.Store(false)
	target, err := s.capsTarget(ctx, model)
	if err != nil {
		return
	}
	e := &capsEntry{ready: make(chan struct{}), digest: s.modelDigest(model)}
	e.caps, e.remote, e.err = showCapabilities(ctx, target, model)
	e.at = time.Now()
	close(e.ready)
	if e.err != nil && !errors.Is(e.err, errNoCapabilities) {
		s.log.Debug("read a model's capabilities again; the last answer serves on", "model", model, "err", e.err)
		return
	}
	s.caps.mu.Lock()
	defer s.caps.mu.Unlock()
	if s.caps.m[name] == old {
		s.caps.m[name] = e
	}
}

// wait returns e once its look-up has ended, or ctx's error should the caller leave first.
func (e *capsEntry) wait(ctx context.Context) (*capsEntry, error) {
	select {
	case <-e.ready:
		return e, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// done reports whether e's look-up has ended.
func (e *capsEntry) done() bool {
	select {
	case <-e.ready:
		return true
	default:
		return false
	}
}

// errNoTargetHasIt is capabilities' error for a model no reachable target lists.
var errNoTargetHasIt = errors.New("no reachable target lists the model")

// lookUpCaps fills e (the entry of model's normalized name) from target's /api/show and
// marks it ready, whatever happens. It runs on no caller's context: callers waiting for
// this look-up must not meet the first caller's hang-up. A failed look-up is forgotten,
// for the next call to look again, but for an answer without capabilities (an Ollama
// before 0.6), which a look again would only repeat.
func (s *Server) lookUpCaps(ctx context.Context, name string, e *capsEntry, target ollama.Client, model string) {
	defer close(e.ready)
	defer func() { e.at = time.Now() }()
	e.caps, e.remote, e.err = showCapabilities(context.WithoutCancel(ctx), target, model)
	if e.err == nil || errors.Is(e.err, errNoCapabilities) {
		return
	}
	s.caps.mu.Lock()
	if s.caps.m[name] == e {
		delete(s.caps.m, name)
	}
	s.caps.mu.Unlock()
}

// stale reports an entry looked up longer than capsTTL ago; s.caps.mu is held.
func (e *capsEntry) stale() bool {
	return e.done() && time.Since(e.at) >= capsTTL // one under way is not
}

// errNoCapabilities is an /api/show answer without capabilities (an Ollama before 0.6).
var errNoCapabilities = errors.New("the model's /api/show lists no capabilities")

// showCapabilities asks target for model's capabilities, and whether it is a remote
// model (its /api/show names a remote host and model, as Ollama's handlers test it).
func showCapabilities(ctx context.Context, target ollama.Client, model string) (caps []string, remote bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, showTimeout)
	defer cancel()
	body, err := json.Marshal(struct {
		Model string `json:"model"`
	}{model})
	if err != nil {
		return nil, false, err
	}
	h := http.Header{"Content-Type": {"application/json"}}
	resp, err := target.Do(ctx, http.MethodPost, "/api/show", h, bytes.NewReader(body))
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, false, &ollama.HTTPError{StatusCode: resp.StatusCode}
	}
	var show struct {
		Capabilities *[]string `json:"capabilities"`
		RemoteHost   string    `json:"remote_host"`
		RemoteModel  string    `json:"remote_model"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&show); err != nil {
		return nil, false, err
	}
	if show.Capabilities == nil {
		return nil, false, errNoCapabilities
	}
	return *show.Capabilities, show.RemoteHost != "" && show.RemoteModel != "", nil
}
