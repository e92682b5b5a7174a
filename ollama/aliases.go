package ollama

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/ollama/ollama/types/model"
)

// Alias is one of the target's model aliases (Ollama's experimental router config,
// GET /api/experimental/aliases): a chat or generate call naming Alias runs Target. A
// prefix alias matches every name that begins with it, as `ollama launch claude` sets
// "claude-sonnet-" for Claude Code's model names.
type Alias struct {
	Alias          string `json:"alias"`
	Target         string `json:"target"`
	PrefixMatching bool   `json:"prefix_matching,omitempty"`
}

// AliasesPath is where Ollama lists, creates and deletes its aliases (v0.17.4).
const AliasesPath = "/api/experimental/aliases"

// AliasReader is a Client that reads the target's aliases (HTTPClient is one); the
// inventory reads them when its client is one.
type AliasReader interface {
	Aliases(ctx context.Context) ([]Alias, error)
}

// Aliases reads the target's aliases. A target without the route (an Ollama before
// aliases, or a proxy that passes only the model calls: 404 or 405) has none.
func (c *HTTPClient) Aliases(ctx context.Context) ([]Alias, error) {
	var v struct {
		Aliases []Alias `json:"aliases"`
	}
	_, err := c.getJSON(ctx, AliasesPath, &v)
	var he *HTTPError
	if errors.As(err, &he) && (he.StatusCode == http.StatusNotFound || he.StatusCode == http.StatusMethodNotAllowed) {
		return nil, nil
	}
	return v.Aliases, err
}

// ResolveAlias returns the model a chat or generate call naming name runs on a target
// with aliases and models (its /api/tags names), as Ollama's resolveAlias does it
// (v0.17.4 server/aliases.go): a model of that name wins; else an exact alias (names
// compared in their shortest form without case), else the longest prefix alias that
// the name's shortest form begins with (without case); an exact alias's target is
// followed through further exact aliases. The result is normalized (NormalizeModel);
// ok is false when no alias applies (a name Ollama would refuse, one it has a model
// of, none matching, a target Ollama would refuse, a loop).
func ResolveAlias(aliases []Alias, models []string, name string) (target string, ok bool) {
	return NewAliasTable(aliases, models).Resolve(name)
}

// AliasTable is a target's aliases and models made ready for ResolveAlias, once for
// many calls (the inventory makes one per poll). Nil resolves nothing.
type AliasTable struct {
	models   map[string]bool   // normalized
	exact    map[string]string // aliasKey -> target as listed
	prefixes []Alias           // lower-cased, longest first (of equal lengths, as listed)
}

// NewAliasTable makes the table of aliases and models; nil when there are no aliases.
func NewAliasTable(aliases []Alias, models []string) *AliasTable {
	if len(aliases) == 0 {
		return nil
	}
	t := &AliasTable{models: make(map[string]bool, len(models)), exact: make(map[string]string, len(aliases))}
	for _, m := range models {
		t.models[NormalizeModel(m)] = true
	}
	for _, a := range aliases {
		if a.PrefixMatching {
			if p := strings.TrimSpace(a.Alias); p != "" {
				t.prefixes = append(t.prefixes, Alias{Alias: strings.ToLower(p), Target: a.Target})
			}
			continue
		}
		if an := model.ParseName(a.Alias); an.IsValid() {
			t.exact[aliasKey(an)] = a.Target
		}
	}
	slices.SortStableFunc(t.prefixes, func(a, b Alias) int { return len(b.Alias) - len(a.Alias) })
	return t
}

// Resolve is ResolveAlias by the table.
func (t *AliasTable) Resolve(name string) (target string, ok bool) {
	if t == nil {
		return "", false
	}
	n := model.ParseName(name)
	if !n.IsValid() || t.models[NormalizeModel(name)] {
		return "", false
	}
	key := aliasKey(n)
	current, found := t.exact[key]
	visited := map[string]bool{}
	if found {
		visited[key] = true
	} else {
		for _, p := range t.prefixes {
			if strings.HasPrefix(key, p.Alias) {
				current, found = p.Target, true
				break
			}
		}
	}
	if !found {
		return "", false
	}
	for {
		tn := model.ParseName(current)
		if !tn.IsValid() {
			return "", false
		}
		k := aliasKey(tn)
		if visited[k] {
			// A loop: Ollama answers the call with a 500.
			return "", false
		}
		visited[k] = true
		next, ok := t.exact[k]
		if !ok {
			return NormalizeModel(tn.String()), true
		}
		current = next
	}
}

// aliasKey is Ollama's normalizeAliasKey: the name's shortest form, without a
// ":latest" tag, lower-cased.
func aliasKey(n model.Name) string {
	d := n.DisplayShortest()
	if strings.EqualFold(n.Tag, "latest") {
		if i := strings.LastIndex(d, ":"); i != -1 {
			d = d[:i]
		}
	}
	return strings.ToLower(d)
}
