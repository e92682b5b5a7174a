package gateway

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
)

// A known route asked with a trailing slash is redirected as Ollama's router does: 301
// for a GET, 307 (method and body kept) otherwise, the query kept; an unknown path with
// one is still a 404.
func TestTrailingSlashRedirects(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, c := range []struct {
		method, path string
		status       int
		location     string
	}{
		{http.MethodGet, "/api/tags/", http.StatusMovedPermanently, "/api/tags"},
		{http.MethodGet, "/api/version/?x=1", http.StatusMovedPermanently, "/api/version?x=1"},
		{http.MethodPost, "/api/chat/", http.StatusTemporaryRedirect, "/api/chat"},
		{http.MethodPost, "/v1/chat/completions/", http.StatusTemporaryRedirect, "/v1/chat/completions"},
		{http.MethodPost, "/v1/messages/", http.StatusTemporaryRedirect, "/v1/messages"},
		{http.MethodGet, "/no/such/", http.StatusNotFound, ""},
		{http.MethodGet, "/api/chat/", http.StatusNotFound, ""}, // as Ollama: no GET route to redirect to
		// The wildcard route of one model takes the slash as part of the name, where
		// Ollama's router (one segment, :model) redirects it.
		{http.MethodGet, "/v1/models/", http.StatusMovedPermanently, "/v1/models"},
		{http.MethodGet, "/v1/models/tiny-a/", http.StatusMovedPermanently, "/v1/models/tiny-a"},
		{http.MethodGet, "/v1/models/tiny-a:latest/?x=1", http.StatusMovedPermanently, "/v1/models/tiny-a:latest?x=1"},
		{http.MethodHead, "/v1/models/tiny-a/", http.StatusNotFound, ""}, // as Ollama: no HEAD route there
		{http.MethodHead, "/v1/models/a/b", http.StatusNotFound, ""},     // as Ollama: :model is one segment
		{http.MethodHead, "/v1/models/tiny-a", http.StatusMethodNotAllowed, ""},
	} {
		req, err := http.NewRequest(c.method, b.URL+c.path, bytes.NewReader([]byte(`{}`)))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.status || resp.Header.Get("Location") != c.location {
			t.Errorf("%s %s: %d Location %q, want %d %q", c.method, c.path, resp.StatusCode, resp.Header.Get("Location"), c.status, c.location)
		}
	}
	// No redirect leaves the path the client named, or this host: an escaped slash, "//"
	// or ".." is never turned into a Location starting "//" (another host).
	for _, raw := range []string{"/%2Fapi%2Ftags/", "//api/tags/", "///api/tags/", "/%2F%2Fevil.com/", "/api/tags//", "/v1/../api/tags/"} {
		req, err := http.NewRequest(http.MethodGet, b.URL, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.URL.Opaque = raw // sent as written
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if loc := resp.Header.Get("Location"); strings.HasPrefix(loc, "//") || strings.HasPrefix(loc, `/\`) {
			t.Errorf("GET %s: %d Location %q: another host", raw, resp.StatusCode, loc)
		}
	}
	// An escaped slash is part of its segment: "/api%2Ftags/" names no route, and is not
	// sent to /api/tags.
	req, err := http.NewRequest(http.MethodGet, b.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.URL.Opaque = "/api%2Ftags/"
	resp, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get("Location") != "" {
		t.Errorf("GET /api%%2Ftags/: %d Location %q, want 404", resp.StatusCode, resp.Header.Get("Location"))
	}
	// A client that follows redirects gets the route's answer.
	resp, out := b.request(t, http.MethodGet, "/api/tags/", nil)
	if resp.StatusCode != 200 || !bytes.Contains(out, []byte(`"models"`)) {
		t.Errorf("followed: %d %s", resp.StatusCode, out)
	}
}
