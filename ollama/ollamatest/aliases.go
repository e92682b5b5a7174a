package ollamatest

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// The fake keeps model aliases as Ollama 0.17.4's router config does
// (/api/experimental/aliases): its chat and generate routes, and those on top of them,
// resolve a model name through them (ollama.ResolveAlias); the others do not.

// resolveAlias is the model a chat or generate call naming name runs.
func (s *Server) resolveAlias(name string) string {
	s.mu.Lock()
	aliases := slices.Clone(s.aliases)
	models := make([]string, len(s.models))
	for i, m := range s.models {
		models[i] = m.Name
	}
	s.mu.Unlock()
	if t, ok := ollama.ResolveAlias(aliases, models, name); ok {
		return t
	}
	return name
}

// SetAlias makes or replaces an alias, as POST /api/experimental/aliases does.
func (s *Server) SetAlias(a ollama.Alias) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.aliases = slices.DeleteFunc(s.aliases, func(e ollama.Alias) bool {
		return e.PrefixMatching == a.PrefixMatching && strings.EqualFold(e.Alias, a.Alias)
	})
	s.aliases = append(s.aliases, a)
	slices.SortFunc(s.aliases, func(a, b ollama.Alias) int { return strings.Compare(a.Alias, b.Alias) })
}

func (s *Server) handleAliasesList(w http.ResponseWriter, _ *http.Request, _ []byte, f *Failure) {
	s.mu.Lock()
	list := slices.Clone(s.aliases)
	s.mu.Unlock()
	if list == nil {
		list = []ollama.Alias{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"aliases": list}, f)
}

func (s *Server) handleAliasCreate(w http.ResponseWriter, _ *http.Request, body []byte, f *Failure) {
	var req ollama.Alias
	if len(strings.TrimSpace(string(body))) == 0 {
		writeError(w, http.StatusBadRequest, "missing request body")
		return
	}
	if err := decodeBody(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	req.Alias, req.Target = strings.TrimSpace(req.Alias), strings.TrimSpace(req.Target)
	switch {
	case req.Alias == "" || req.Target == "":
		writeError(w, http.StatusBadRequest, "alias and target are required")
		return
	case !ollama.ValidModelName(req.Target):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("target %q is invalid", req.Target))
		return
	case !req.PrefixMatching && !ollama.ValidModelName(req.Alias):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("alias %q is invalid", req.Alias))
		return
	case !req.PrefixMatching && ollama.NormalizeModel(req.Alias) == ollama.NormalizeModel(req.Target):
		writeError(w, http.StatusBadRequest, "alias cannot point to itself")
		return
	}
	if _, ok := s.findModel(req.Alias); ok && !req.PrefixMatching {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("alias %q conflicts with existing model", req.Alias))
		return
	}
	s.SetAlias(req)
	writeJSON(w, http.StatusOK, req, f)
}

func (s *Server) handleAliasDelete(w http.ResponseWriter, _ *http.Request, body []byte, f *Failure) {
	var req struct {
		Alias string `json:"alias"`
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		writeError(w, http.StatusBadRequest, "missing request body")
		return
	}
	if err := decodeBody(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	req.Alias = strings.TrimSpace(req.Alias)
	if req.Alias == "" {
		writeError(w, http.StatusBadRequest, "alias is required")
		return
	}
	s.mu.Lock()
	n := len(s.aliases)
	s.aliases = slices.DeleteFunc(s.aliases, func(e ollama.Alias) bool { return strings.EqualFold(e.Alias, req.Alias) })
	deleted := len(s.aliases) < n
	s.mu.Unlock()
	if !deleted {
		writeError(w, http.StatusNotFound, fmt.Sprintf("alias %q not found", req.Alias))
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"deleted": true}, f)
}
