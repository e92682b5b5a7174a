package gateway

import (
	"net/http"
	"strings"
	"testing"
)

// modelChanges are the routes that change the target's models for every caller, each
// with a body the fake Ollama accepts.
var modelChanges = []struct{ method, path, body string }{
	{http.MethodPost, "/api/pull", `{"model":"tiny-a","stream":false}`},
	{http.MethodPost, "/api/push", `{"model":"tiny-a","stream":false}`},
	{http.MethodPost, "/api/create", `{"model":"made","from":"tiny-a","stream":false}`},
	{http.MethodPost, "/api/copy", `{"source":"tiny-a","destination":"copied"}`},
	{http.MethodDelete, "/api/delete", `{"model":"copied"}`},
	{http.MethodPost, "/api/experimental/aliases", `{"alias":"nick","target":"tiny-a"}`},
	{http.MethodDelete, "/api/experimental/aliases", `{"alias":"nick"}`},
	{http.MethodPost, "/api/blobs/sha256:" + strings.Repeat("0", 64), `x`},
}

// With FOREMAN_MODEL_ADMINS naming programs, only their named tokens change the models:
// another token gets a 403 JSON error and the target never sees the call, while reading
// the models stays open to it (ADR-0124).
func TestModelAdminsAloneChangeTheModels(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) {
		c.AuthTokens = []NamedToken{{"alice", "tokenA-secret"}, {"bob", "tokenB-secret"}}
		c.ModelAdmins = []string{"alice"}
	}))
	auth := func(tok string) []string { return []string{"Authorization", "Bearer " + tok} }
	for _, c := range modelChanges {
		before := len(b.Fake.Calls())
		resp, out := b.request(t, c.method, c.path, []byte(c.body), auth("tokenB-secret")...)
		wantError(t, resp, out, http.StatusForbidden, `program "bob" may not change the models`)
		for _, call := range b.Fake.Calls()[before:] {
			t.Errorf("%s %s by bob reached the target: %s %s", c.method, c.path, call.Method, call.Path)
		}
		resp, out = b.request(t, c.method, c.path, []byte(c.body), auth("tokenA-secret")...)
		if resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusUnauthorized {
			t.Errorf("%s %s by alice, a model admin: %d %s", c.method, c.path, resp.StatusCode, out)
		}
		if len(b.Fake.Calls()) == before {
			t.Errorf("%s %s by alice never reached the target", c.method, c.path)
		}
	}
	for _, c := range []struct{ method, path, body string }{
		{http.MethodGet, "/api/tags", ""},
		{http.MethodGet, "/api/ps", ""},
		{http.MethodPost, "/api/show", `{"model":"tiny-a"}`},
		{http.MethodGet, "/api/experimental/aliases", ""},
		{http.MethodHead, "/api/blobs/sha256:" + strings.Repeat("0", 64), ""},
	} {
		var body []byte
		if c.body != "" {
			body = []byte(c.body)
		}
		if resp, out := b.request(t, c.method, c.path, body, auth("tokenB-secret")...); resp.StatusCode == http.StatusForbidden {
			t.Errorf("%s %s, a read, refused to bob: %s", c.method, c.path, out)
		}
	}
}

// Without FOREMAN_MODEL_ADMINS every accepted token changes the models, as every caller
// of Ollama's own port may.
func TestWithoutModelAdminsEveryTokenChangesTheModels(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) {
		c.AuthTokens = []NamedToken{{"alice", "tokenA-secret"}, {"bob", "tokenB-secret"}}
	}))
	for _, c := range modelChanges {
		before := len(b.Fake.Calls())
		resp, out := b.request(t, c.method, c.path, []byte(c.body), "Authorization", "Bearer tokenB-secret")
		if resp.StatusCode == http.StatusForbidden {
			t.Errorf("%s %s by bob: %d %s", c.method, c.path, resp.StatusCode, out)
		}
		if len(b.Fake.Calls()) == before {
			t.Errorf("%s %s by bob never reached the target", c.method, c.path)
		}
	}
}

// Model admins must be programs of named tokens: without named tokens no request proves
// its program, and a name no token carries is a typo that would lock everyone out.
func TestModelAdminsConfig(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	base := Config{Store: b.Broker.Store, Target: b.Target, Inventory: b.Inv}
	for _, c := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.ModelAdmins = []string{"alice"} }, "needs named tokens"},
		{func(c *Config) { c.AuthToken, c.ModelAdmins = "single", []string{"alice"} }, "needs named tokens"},
		{func(c *Config) {
			c.AuthTokens, c.ModelAdmins = []NamedToken{{"alice", "tokenA-secret"}}, []string{"alice", "alcie"}
		}, `"alcie", the program of no named token`},
	} {
		cfg := base
		c.mod(&cfg)
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", cfg.ModelAdmins, err, c.want)
		}
	}
}
