package gateway

import (
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/ui"
)

// getNoRedirect sends GET path with the given Authorization (none when ""), without
// following redirects.
func getNoRedirect(t *testing.T, b *testBundle, method, path, auth string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t, 30e9), method, b.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// With auth on, the status page's files load without a token (the page asks for one and
// sends it on its API calls), and nothing else under /ui/ or beside it does.
func TestUIStaticFilesNeedNoToken(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) { c.AuthToken = "s3cret" }))
	for _, f := range []struct{ path, ctype, contains string }{
		{"/ui/", "text/html", `<script src="app.js"`},
		{"/ui/index.html", "", ""}, // FileServer redirects it to ./
		{"/ui/app.js", "text/javascript", "sessionStorage"},
		{"/ui/style.css", "text/css", "table.jobs"},
	} {
		resp, body := getNoRedirect(t, b, "GET", f.path, "")
		if f.ctype == "" {
			if resp.StatusCode != http.StatusMovedPermanently {
				t.Errorf("GET %s: %d, want a redirect", f.path, resp.StatusCode)
			}
			continue
		}
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), f.ctype) || !strings.Contains(body, f.contains) {
			t.Errorf("GET %s without a token: %d %q, body %.80q", f.path, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		if got := resp.Header.Get("Content-Security-Policy"); got != ui.ContentSecurityPolicy {
			t.Errorf("GET %s: Content-Security-Policy %q", f.path, got)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no X-Content-Type-Options: nosniff", f.path)
		}
	}
	if resp, _ := getNoRedirect(t, b, "HEAD", "/ui/app.js", ""); resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD /ui/app.js without a token: %d, want 200", resp.StatusCode)
	}
	if resp, _ := getNoRedirect(t, b, "GET", "/ui", ""); resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/ui/" {
		t.Errorf("GET /ui: %d Location %q, want a redirect to /ui/", resp.StatusCode, resp.Header.Get("Location"))
	}
	// The API the page calls, unknown files and other methods still need the token.
	for _, rq := range []struct{ method, path string }{
		{"GET", "/jobs"}, {"GET", "/metrics"}, {"GET", "/ui/nope.js"}, {"GET", "/ui/."}, {"GET", "/ui/app.js/x"},
		{"POST", "/ui/"}, {"DELETE", "/ui/app.js"}, {"GET", "/uix"},
	} {
		resp, body := getNoRedirect(t, b, rq.method, rq.path, "")
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s %s without a token: %d %s, want 401", rq.method, rq.path, resp.StatusCode, body)
		}
	}
	if resp, body := getNoRedirect(t, b, "GET", "/jobs", "Bearer s3cret"); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /jobs with the token: %d %s", resp.StatusCode, body)
	}
	// A page from another origin gets no more than before (the browser policy stays on).
	req, _ := http.NewRequestWithContext(testCtx(t, 30e9), "GET", b.URL+"/ui/", nil)
	req.Header.Set("Origin", "http://evil.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("GET /ui/ from a foreign origin: %d, want 403", resp.StatusCode)
	}
}

// A path under /ui/ that is no file of the page gets the JSON 404 of any unknown path.
func TestUIUnknownFileIsAJSON404(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	for _, path := range []string{"/ui/nope.js", "/ui/app.js/x", "/ui/static/", "/ui/%2e%2e/gateway.go"} {
		resp, body := getNoRedirect(t, b, "GET", path, "")
		var e struct {
			Error string `json:"error"`
		}
		if resp.StatusCode != http.StatusNotFound || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
			t.Errorf("GET %s: %d %q %q, want a JSON 404", path, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
	}
	if resp, body := getNoRedirect(t, b, "GET", "/ui/", ""); resp.StatusCode != http.StatusOK || !strings.Contains(body, `<script src="app.js"`) {
		t.Errorf("GET /ui/: %d %.80q", resp.StatusCode, body)
	}
}

// The page's script puts job fields (which users choose) into the page only as text, and
// the page loads nothing from outside foreman.
func TestUIFilesInsertTextOnlyAndStayOffline(t *testing.T) {
	t.Parallel()
	html := regexp.MustCompile(`\.innerHTML|\.outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function\(`)
	external := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	err := fs.WalkDir(ui.Files(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(ui.Files(), path)
		if err != nil {
			return err
		}
		if m := html.Find(data); m != nil {
			t.Errorf("%s uses %s: job fields must go in as text", path, m)
		}
		for _, m := range external.FindAll(data, -1) {
			if string(m) != "http://www.w3.org" { // the SVG namespace, never fetched
				t.Errorf("%s refers to %s: the page must work offline", path, m)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
