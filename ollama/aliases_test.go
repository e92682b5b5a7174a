package ollama_test

import (
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// ResolveAlias resolves as Ollama 0.17.4's alias store does (server/aliases.go
// ResolveName): a model of the name wins, an exact alias (shortest form, no case) before
// the longest prefix alias, exact aliases followed to the end of their chain.
func TestResolveAlias(t *testing.T) {
	models := []string{"tiny-a:latest", "tiny-b:latest", "qwen3:8b", "gpt-4o:latest"}
	aliases := []ollama.Alias{
		{Alias: "fast", Target: "tiny-a"},
		{Alias: "Smart", Target: "qwen3:8b"},
		{Alias: "chain", Target: "fast"},
		{Alias: "loop-a", Target: "loop-b"},
		{Alias: "loop-b", Target: "loop-a"},
		{Alias: "gpt-4o", Target: "tiny-b"}, // shadowed: a model of that name is installed
		{Alias: "claude-sonnet-", Target: "tiny-b", PrefixMatching: true},
		{Alias: "claude-", Target: "tiny-a", PrefixMatching: true},
		{Alias: "Claude-Haiku-", Target: "qwen3:8b", PrefixMatching: true},
		{Alias: "broken", Target: "a/b/c/d/e"},
		{Alias: "gone", Target: "not-installed"},
	}
	for _, c := range []struct {
		name, want string
	}{
		{"fast", "tiny-a:latest"},
		{"FAST:latest", "tiny-a:latest"},
		{"library/fast", "tiny-a:latest"},
		{"registry.ollama.ai/library/fast:latest", "tiny-a:latest"},
		{"smart", "qwen3:8b"},
		{"chain", "tiny-a:latest"},
		{"claude-sonnet-4-5-20250929", "tiny-b:latest"},
		{"claude-opus-4", "tiny-a:latest"},
		{"CLAUDE-HAIKU-4-5", "qwen3:8b"},
		{"claude-sonnet-4-5:beta", "tiny-b:latest"},
		// An alias's target need not be installed: the call then fails as Ollama's does.
		{"gone", "not-installed:latest"},
	} {
		got, ok := ollama.ResolveAlias(aliases, models, c.name)
		if !ok || got != c.want {
			t.Errorf("%q: %q, %v; want %q", c.name, got, ok, c.want)
		}
	}
	for _, name := range []string{
		"tiny-a",     // a model
		"gpt-4o",     // a model shadows its alias
		"fastest",    // an exact alias is no prefix
		"fast:v2",    // nor does it match another tag
		"other/fast", // nor another namespace
		"loop-a",     // a loop: Ollama answers 500
		"broken",     // a target Ollama cannot parse
		"tiny-a:",    // a name Ollama refuses
		"",           // no name
		"sonnet-4-5", // no alias begins it
	} {
		if got, ok := ollama.ResolveAlias(aliases, models, name); ok {
			t.Errorf("%q resolved to %q, want no alias", name, got)
		}
	}
	if got, ok := ollama.ResolveAlias(nil, models, "fast"); ok {
		t.Errorf("no aliases: %q resolved to %q", "fast", got)
	}
}
