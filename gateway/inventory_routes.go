package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

const (
	// tagsMaxAge is how old the inventory's /api/tags may be before /api/tags polls
	// again: fresh enough that a client listing right after a pull sees the model,
	// while a burst of listings costs the target one poll.
	tagsMaxAge = time.Second
	// liveFetchTimeout bounds a live /api/ps before the cached one is served instead.
	liveFetchTimeout = 5 * time.Second
)

// handleRoot answers "Ollama is running", which clients use as a liveness probe. It is
// foreman's own answer: foreman is running even while the target is not.
func (s *Server) handleRoot(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("Ollama is running"))
}

// handleTags serves /api/tags from the inventory, re-polling when the cached list is
// older than tagsMaxAge. While the target is down the last known list is served; with
// no list at all the poll's error is. A target whose polls go unanswered is not waited
// for long: the re-poll is bounded as an outage's check is, and skipped while a check
// that got no answer stands (clients list the models often).
func (s *Server) handleTags(w http.ResponseWriter, r *http.Request) {
	snap := s.inv.Snapshot()
	if (!snap.Polled || time.Since(snap.LastPoll) > tagsMaxAge) && !(snap.Polled && s.downStands()) {
		err := s.refreshOwn(r.Context(), 0)
		snap = s.inv.Snapshot()
		if err != nil && (!snap.Polled || r.Context().Err() != nil) {
			if r.Context().Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				// The target's failure (the poll's own bound), not a timeout of foreman's.
				err = refuse(ErrBadUpstream, err.Error())
			}
			s.writeError(w, r, err)
			return
		}
	}
	writeRawJSON(w, s.withOthers(r.Context(), snap.TagsRaw, func(t broker.Target) []byte { return t.Tags }))
}

// handlePs serves /api/ps fetched live, since which model is loaded changes with every
// swap, and updates the inventory with it. When the target cannot be reached the last
// known list is served: at once while a check that got no answer stands, after a
// check's bound while the polls go unanswered.
func (s *Server) handlePs(w http.ResponseWriter, r *http.Request) {
	snap := s.inv.Snapshot()
	if snap.PsRaw != nil && s.downStands() {
		writeRawJSON(w, s.withOthers(r.Context(), snap.PsRaw, func(t broker.Target) []byte { return t.Ps }))
		return
	}
	bound := liveFetchTimeout
	if !snap.DownSince.IsZero() {
		bound = s.outageChecks.probe
	}
	ctx, cancel := context.WithTimeout(r.Context(), bound)
	defer cancel()
	ps, raw, err := s.target.Ps(ctx)
	if errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil {
		s.outageChecks.noAnswer()
	}
	if err == nil {
		s.inv.SetPs(ps, raw)
		writeRawJSON(w, s.withOthers(r.Context(), raw, func(t broker.Target) []byte { return t.Ps }))
		return
	}
	if snap := s.inv.Snapshot(); ollama.Unreachable(err) && r.Context().Err() == nil && snap.PsRaw != nil {
		s.log.Debug("serving cached /api/ps", "err", err)
		writeRawJSON(w, s.withOthers(r.Context(), snap.PsRaw, func(t broker.Target) []byte { return t.Ps }))
		return
	}
	if r.Context().Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		err = refuse(ErrBadUpstream, fmt.Sprintf("ollama: no answer to GET /api/ps within %s", bound))
	}
	s.writeError(w, r, err)
}

// writeRawJSON sends a JSON body the target produced, unchanged, as Ollama labels it.
func writeRawJSON(w http.ResponseWriter, raw []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(raw)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(raw)
}
