package ollama_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
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

// The HTTP client reads Ollama's list of aliases; a target without the route (an Ollama
// before aliases: 404; a proxy passing only some methods: 405) has none, and any other
// error status is an error.
func TestHTTPClientReadsAliases(t *testing.T) {
	t.Parallel()
	status := map[string]int{"/list": 200, "/none": 404, "/method": 405, "/broken": 500}
	for prefix, code := range status {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != ollama.AliasesPath || r.Method != http.MethodGet {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.WriteHeader(code)
			if code == 200 {
				_, _ = w.Write([]byte(`{"aliases":[{"alias":"claude-sonnet-","target":"qwen3:8b","prefix_matching":true},{"alias":"fast","target":"tiny-a"}]}`))
			} else {
				_, _ = w.Write([]byte(`{"error":"unsupported router config version 2"}`))
			}
		}))
		t.Cleanup(srv.Close)
		c, err := ollama.NewClient(ollama.ClientConfig{BaseURL: srv.URL})
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.Aliases(t.Context())
		switch prefix {
		case "/list":
			want := []ollama.Alias{{Alias: "claude-sonnet-", Target: "qwen3:8b", PrefixMatching: true}, {Alias: "fast", Target: "tiny-a"}}
			if err != nil || !slices.Equal(got, want) {
				t.Errorf("200: %v, %v; want %v", got, err, want)
			}
		case "/none", "/method":
			if err != nil || got != nil {
				t.Errorf("%d: %v, %v; want no aliases and no error", code, got, err)
			}
		case "/broken":
			if err == nil {
				t.Errorf("500: %v, want an error", got)
			}
		}
	}
}

// scriptedAliases is a target whose polls answer its models and, in turn, one of reads.
type scriptedAliases struct {
	ollama.Client // nil: only Tags, Ps and Aliases are called
	mu            sync.Mutex
	reads         []func() ([]ollama.Alias, error)
}

func (c *scriptedAliases) Tags(context.Context) (*ollama.ListResponse, []byte, error) {
	return &ollama.ListResponse{Models: []ollama.ListModelResponse{{Name: "tiny-a:latest"}, {Name: "tiny-b:latest"}}}, []byte(`{}`), nil
}

func (c *scriptedAliases) Ps(context.Context) (*ollama.ProcessResponse, []byte, error) {
	return &ollama.ProcessResponse{}, []byte(`{"models":[]}`), nil
}

func (c *scriptedAliases) Aliases(context.Context) ([]ollama.Alias, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	read := c.reads[0]
	c.reads = c.reads[1:]
	return read()
}

// Each poll reads the aliases: a failed read keeps the last ones (and leaves the target
// healthy: it answers its polls), warned once a streak; a target with none has none.
func TestInventoryReadsAliasesEachPoll(t *testing.T) {
	t.Parallel()
	list := func(as ...ollama.Alias) func() ([]ollama.Alias, error) {
		return func() ([]ollama.Alias, error) { return as, nil }
	}
	fail := func() ([]ollama.Alias, error) {
		return nil, &ollama.HTTPError{StatusCode: 500, Message: "unsupported router config version 2"}
	}
	c := &scriptedAliases{reads: []func() ([]ollama.Alias, error){
		list(ollama.Alias{Alias: "fast", Target: "tiny-b"}),
		fail, fail,
		list(ollama.Alias{Alias: "fast", Target: "tiny-a"}),
		fail,
		list(),
	}}
	var logs lockedBuffer
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: c, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	for i, want := range []string{"tiny-b:latest", "tiny-b:latest", "tiny-b:latest", "tiny-a:latest", "tiny-a:latest", ""} {
		if err := inv.Refresh(t.Context()); err != nil {
			t.Fatalf("poll %d: %v", i, err)
		}
		if snap := inv.Snapshot(); snap.Degraded || snap.Err != nil {
			t.Fatalf("poll %d: degraded %v, %v: an alias read is no health check", i, snap.Degraded, snap.Err)
		}
		if got, _ := inv.ResolveAlias("fast"); got != want {
			t.Errorf("poll %d: fast resolves to %q, want %q", i, got, want)
		}
	}
	if n := strings.Count(logs.String(), "model aliases"); n != 2 {
		t.Errorf("%d warnings of failed alias reads, want one for each of the two streaks:\n%s", n, logs.String())
	}
	// A client that reads no aliases resolves none.
	plain := ollama.NewInventory(ollama.InventoryConfig{Client: tagsClient{}})
	if err := plain.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got, ok := plain.ResolveAlias("fast"); ok {
		t.Errorf("without an alias reader fast resolved to %q", got)
	}
}
