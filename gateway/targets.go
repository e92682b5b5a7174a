package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// otherTargets are the live targets of the other foremen on this NATS (ADR-0029); none
// without Config.TargetClient or when the bucket cannot be read.
func (s *Server) otherTargets(ctx context.Context) []broker.Target {
	others, err := s.readOtherTargets(ctx)
	if err != nil {
		s.log.Debug("read targets", "err", err)
	}
	return others
}

// readOtherTargets is otherTargets with the error of a read that failed.
func (s *Server) readOtherTargets(ctx context.Context) ([]broker.Target, error) {
	if s.cfg.TargetClient == nil {
		return nil, nil
	}
	all, err := s.store.Targets(ctx)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(slices.Clone(all), func(t broker.Target) bool { return t.Name == s.cfg.TargetName }), nil
}

// otherHas reports whether another live foreman's target lists model, reachable or not:
// a job for it waits in the queue until that target can run it.
func (s *Server) otherHas(ctx context.Context, model string) bool {
	want := ollama.NormalizeModel(model)
	return slices.ContainsFunc(s.otherTargets(ctx), func(t broker.Target) bool { return t.HasModel(want) })
}

// otherClient returns a client for another target that has model and answers its
// foreman's polls, or nil.
func (s *Server) otherClient(ctx context.Context, model string) ollama.Client {
	want := ollama.NormalizeModel(model)
	return s.otherClientWhere(ctx, func(t broker.Target) bool { return t.HasModel(want) })
}

// otherClientWhere returns a client for another target that answers its foreman's polls
// and that keep accepts, or nil.
func (s *Server) otherClientWhere(ctx context.Context, keep func(broker.Target) bool) ollama.Client {
	others := slices.DeleteFunc(s.otherTargets(ctx), func(t broker.Target) bool { return !t.Reachable })
	for _, t := range others {
		if !keep(t) || sameTargetURL(t.URL, s.cfg.TargetURL) {
			continue // a foreman that published a loopback URL from another host reads as ours
		}
		c, err := s.cfg.TargetClient(t.URL)
		if err != nil {
			s.log.Warn("client for target", "target", t.Name, "err", err)
			continue
		}
		return c
	}
	return nil
}

// sameTargetURL reports whether two target URLs name the same target. A published URL
// has no userinfo (each foreman uses its own token), while the own one may have it: it is
// left out of both, with the rest compared as shown.
func sameTargetURL(a, b string) bool {
	strip := func(raw string) string {
		if u, err := url.Parse(raw); err == nil && u.Host != "" {
			u.User = nil
			raw = u.String()
		}
		return ollama.RedactURL(raw)
	}
	return strip(a) == strip(b)
}

// unionList merges the "models" arrays of /api/tags or /api/ps bodies, own first, each
// model once (by normalized name). Bodies that do not parse are skipped.
func unionList(own []byte, others ...[]byte) []byte {
	seen := map[string]bool{}
	models := []json.RawMessage{}
	for _, raw := range append([][]byte{own}, others...) {
		var body struct {
			Models []json.RawMessage `json:"models"`
		}
		if len(raw) == 0 || json.Unmarshal(raw, &body) != nil {
			continue
		}
		for _, m := range body.Models {
			var id struct{ Name, Model string }
			_ = json.Unmarshal(m, &id)
			n := id.Name
			if n == "" {
				n = id.Model
			}
			n = ollama.NormalizeModel(n)
			if seen[n] {
				continue
			}
			seen[n] = true
			models = append(models, m)
		}
	}
	out, _ := json.Marshal(struct {
		Models []json.RawMessage `json:"models"`
	}{models})
	return out
}

// withOthers returns own unchanged when no other target is live, else the union of own
// and the others' lists picked by pick.
func (s *Server) withOthers(ctx context.Context, own []byte, pick func(broker.Target) []byte) []byte {
	others := s.otherTargets(ctx)
	if len(others) == 0 {
		return own
	}
	raws := make([][]byte, 0, len(others))
	for _, t := range others {
		raws = append(raws, pick(t))
	}
	return unionList(own, raws...)
}

// targetView is one target in /healthz and GET /queue.
type targetView struct {
	Name      string   `json:"name"`
	URL       string   `json:"url,omitempty"`
	Reachable bool     `json:"reachable"`
	Loaded    []string `json:"loaded"`
	Models    []string `json:"models,omitempty"` // not on the unauthenticated /healthz
	Own       bool     `json:"own,omitempty"`
	// DownSince (own target only) is when its polls stopped being answered (refused,
	// reset, no answer in time), so a page shows a hung Ollama while a job still runs.
	DownSince *time.Time `json:"down_since,omitempty"`
	// Error (own target only) is the last poll's failure, on one line; none after a poll
	// that succeeded.
	Error string `json:"error,omitempty"`
}

// targetViews lists the own target (from the inventory) and the other live ones; only
// the own one when the others could not be read (the error says why).
func (s *Server) targetViews(ctx context.Context) ([]targetView, error) {
	snap := s.inv.Snapshot()
	own := targetView{Name: s.cfg.TargetName, URL: ollama.RedactURL(s.cfg.TargetURL), Reachable: snap.Polled && !snap.Degraded,
		Loaded: orEmpty(s.inv.Loaded()), Models: orEmpty(snap.Models()), Own: true}
	if !snap.DownSince.IsZero() {
		t := snap.DownSince.UTC()
		own.DownSince = &t
	}
	if snap.Err != nil {
		own.Error = broker.PauseText(snap.Err)
	}
	out := []targetView{own}
	others, err := s.readOtherTargets(ctx)
	for _, t := range others {
		out = append(out, targetView{Name: t.Name, URL: ollama.RedactURL(t.URL), Reachable: t.Reachable, Loaded: orEmpty(t.Loaded), Models: orEmpty(t.Models)})
	}
	return out, err
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// relayModel relays a request naming model to a target that has it: the own target
// when its inventory lists it and it answers its polls, else another live one (while the
// own target is down but lists the model, a reachable one only), else the own target
// after requireModel's re-poll (which answers 404 when it lacks the model too).
// A nil body is none (GET). It reports whether the request was sent to the own target.
func (s *Server) relayModel(w http.ResponseWriter, r *http.Request, method, model, path string, body []byte, sent func()) (own bool) {
	reader := func() io.Reader {
		if body == nil {
			return http.NoBody
		}
		return bytes.NewReader(body)
	}
	// A listing that is only remembered (ADR-0047), or the last known one of a target
	// that stopped answering, is no reason to pass over a Mac that answers. Another Mac
	// whose foreman says its Ollama is unreachable is not called: one that takes
	// connections and answers nothing would hold the call with no bound (its own foreman
	// bounds only its own callers, ADR-0046).
	if has := s.inv.HasModel(model); !has || !s.inv.Reachable() {
		if c := s.otherClient(r.Context(), model); c != nil {
			s.relayTo(c, w, r, method, path, reader(), sent)
			return false
		}
		if !has && s.otherHas(r.Context(), model) {
			s.writeError(w, r, refuse(ErrBadUpstream, fmt.Sprintf(
				"the Ollama that has model %q is unreachable (its foreman says so): retry later", clipInput(model))))
			return false
		}
	}
	if err := s.requireModel(r.Context(), model); err != nil {
		s.writeError(w, r, err)
		return false
	}
	s.relay(w, r, method, path, reader(), sent)
	return true
}

// handleOpenAIModels serves GET /v1/models: the own target's answer, with the models only
// other live targets have appended in Ollama's shape (id, "model", modified time, owner
// namespace). While the own target does not answer (its polls go unanswered, or this call
// got no answer), its last known list stands for its answer, as on /api/tags: the other
// Macs still serve, and a client listing models on load keeps working.
func (s *Server) handleOpenAIModels(w http.ResponseWriter, r *http.Request) {
	others := s.otherTargets(r.Context())
	if len(others) == 0 || r.Method != http.MethodGet {
		s.relayBodyless(w, r)
		return
	}
	snap := s.inv.Snapshot()
	known := snap.TagsRaw != nil
	if known && (s.downStands() || !snap.DownSince.IsZero()) {
		writeJSON(w, http.StatusOK, openAIModels(nil, append([][]byte{snap.TagsRaw}, tagsOf(others)...)))
		return
	}
	resp, release, err := s.doOwn(r.Context(), http.MethodGet, targetPath("/v1/models", r.URL.RawQuery), forwardHeader(r.Header), http.NoBody)
	defer release()
	if err != nil {
		if known && r.Context().Err() == nil && (ollama.Unreachable(err) || errors.Is(err, ErrBadUpstream)) {
			s.log.Debug("serving /v1/models from the last known list", "err", err)
			writeJSON(w, http.StatusOK, openAIModels(nil, append([][]byte{snap.TagsRaw}, tagsOf(others)...)))
			return
		}
		s.writeError(w, r, err)
		return
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, s.cfg.metadataMax+1))
	if err != nil {
		// Cut short (by the outage's bound, or the target): no part of it passes for all.
		var cut *Error
		if !errors.As(err, &cut) {
			err = refuse(ErrBadUpstream, "ollama's model list was cut short: "+err.Error())
		}
		s.writeError(w, r, err)
		return
	}
	if int64(len(raw)) > s.cfg.metadataMax {
		// A list that does not end (a broken target, a gzip bomb) would grow the heap
		// without bound; the inventory reads /api/tags no further.
		s.writeError(w, r, refuse(ErrBadUpstream, fmt.Sprintf("ollama's model list is over %d bytes", s.cfg.metadataMax)))
		return
	}
	var list openAIModelList
	if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &list) != nil {
		copyHeader(w.Header(), resp.Header)
		w.Header().Del("Content-Length")
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(raw)
		return
	}
	writeJSON(w, http.StatusOK, openAIModels(list.Data, tagsOf(others)))
}

// openAIModelList is the body of GET /v1/models.
type openAIModelList struct {
	Object string            `json:"object"`
	Data   []json.RawMessage `json:"data"`
}

// tagsOf is the /api/tags body of each target.
func tagsOf(targets []broker.Target) [][]byte {
	out := make([][]byte, 0, len(targets))
	for _, t := range targets {
		out = append(out, t.Tags)
	}
	return out
}

// openAIModels is the /v1/models list of the entries own (as the own target answered
// them) and, after them, each model of the /api/tags bodies tags not listed yet, in the
// shape Ollama gives it there. Bodies that do not parse are skipped.
func openAIModels(own []json.RawMessage, tags [][]byte) openAIModelList {
	list := openAIModelList{Object: "list", Data: own}
	seen := map[string]bool{}
	for _, m := range own {
		var id struct{ ID string }
		_ = json.Unmarshal(m, &id)
		seen[ollama.NormalizeModel(id.ID)] = true
	}
	for _, raw := range tags {
		var tl ollama.ListResponse
		if json.Unmarshal(raw, &tl) != nil {
			continue
		}
		for _, m := range tl.Models {
			if n := ollama.NormalizeModel(m.Name); n != "" && !seen[n] {
				seen[n] = true
				entry, _ := json.Marshal(map[string]any{"id": m.Name, "object": "model", "created": m.ModifiedAt.Unix(), "owned_by": ownerOf(m.Name)})
				list.Data = append(list.Data, entry)
			}
		}
	}
	if list.Data == nil {
		list.Data = []json.RawMessage{}
	}
	return list
}

// ownerOf is the namespace of a model name as Ollama's /v1/models reports it: "library"
// for "tiny-a:latest", "user" for "user/model", the middle part of "host/ns/model".
func ownerOf(name string) string {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return "library"
	}
	parts := strings.Split(name[:i], "/")
	return parts[len(parts)-1]
}
