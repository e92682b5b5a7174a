package gateway

import (
	"context"
	"io"
	"net/http"
	"sync"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// With FOREMAN_AUTH_TOKEN set every route but /healthz needs the token (as a bearer token
// or an X-Api-Key), and the token is never passed on to the target.
func TestAuthRequired(t *testing.T) {
	t.Parallel()
	var (
		mu   sync.Mutex
		seen []http.Header
	)
	b := newTestBundle(t,
		withGateway(func(c *Config) { c.AuthToken = "s3cret" }),
		withTarget(func(c ollama.Client) ollama.Client {
			return &hookClient{Client: c, do: func(ctx context.Context, method, path string, h http.Header, body io.Reader) (*http.Response, error) {
				mu.Lock()
				seen = append(seen, h.Clone())
				mu.Unlock()
				return c.Do(ctx, method, path, h, body)
			}}
		}))
	routes := []struct{ method, path, body string }{
		{"GET", "/", ""},
		{"GET", "/api/version", ""},
		{"GET", "/api/tags", ""},
		{"GET", "/api/ps", ""},
		{"POST", "/api/show", `{"model":"tiny-a"}`},
		{"POST", "/api/embed", `{"model":"tiny-embed","input":"x"}`},
		{"POST", "/v1/embeddings", `{"model":"tiny-embed","input":"x"}`},
		{"GET", "/v1/models", ""},
		{"POST", "/api/copy", `{"source":"tiny-a","destination":"c"}`},
		{"GET", "/jobs", ""},
		{"GET", "/queue", ""},
		{"GET", "/no/such/route", ""},
	}
	for _, rt := range routes {
		t.Run(rt.method+" "+rt.path, func(t *testing.T) {
			var body []byte
			if rt.body != "" {
				body = []byte(rt.body)
			}
			for _, auth := range []string{"none", "Bearer wrong", "Basic czNjcmV0", "s3cret", "Bearer s3cret2", "Bearer"} {
				hdr := []string{"Authorization", auth}
				if auth == "none" {
					hdr = []string{"Authorization", "x"} // the helper must not add the right one
				}
				resp, out := b.request(t, rt.method, rt.path, body, hdr...)
				wantError(t, resp, out, http.StatusUnauthorized, "unauthorized")
				if resp.Header.Get("WWW-Authenticate") == "" {
					t.Error("no WWW-Authenticate header")
				}
			}
			for _, auth := range []string{"Bearer s3cret", "bearer s3cret", "Bearer   s3cret"} {
				resp, out := b.request(t, rt.method, rt.path, body, "Authorization", auth)
				if resp.StatusCode == http.StatusUnauthorized {
					t.Fatalf("the right token (%q) was refused: %s", auth, out)
				}
			}
			// The X-Api-Key Anthropic's SDKs send is the token too, beside a wrong bearer
			// token as well; a wrong one is refused.
			resp, out := b.request(t, rt.method, rt.path, body, "Authorization", "Bearer wrong", "X-Api-Key", "s3cret")
			if resp.StatusCode == http.StatusUnauthorized {
				t.Fatalf("the right X-Api-Key was refused: %s", out)
			}
			resp, out = b.request(t, rt.method, rt.path, body, "Authorization", "x", "X-Api-Key", "wrong")
			wantError(t, resp, out, http.StatusUnauthorized, "unauthorized")
		})
	}
	resp, out := b.request(t, http.MethodGet, "/healthz", nil, "Authorization", "x")
	if resp.StatusCode != 200 {
		t.Fatalf("/healthz without a token: %d %s", resp.StatusCode, out)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, h := range seen {
		if h.Get("Authorization") != "" || h.Get("X-Api-Key") != "" {
			t.Errorf("foreman's token was passed to the target: %q %q", h.Get("Authorization"), h.Get("X-Api-Key"))
		}
	}
	if len(seen) == 0 {
		t.Fatal("no pass-through call was seen; the header check proves nothing")
	}
}

func TestAuthOff(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	for _, p := range []string{"/", "/api/tags", "/api/version", "/healthz"} {
		resp, out := b.request(t, http.MethodGet, p, nil)
		if resp.StatusCode != 200 {
			t.Errorf("GET %s without auth configured: %d %s", p, resp.StatusCode, out)
		}
	}
}
