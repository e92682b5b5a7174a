// Package ui is foreman's status page: an HTML page, a script and a style sheet embedded
// in the binary, served under /ui/. The page needs no build step and fetches nothing from
// outside foreman (a machine on a LAN renders it offline); it polls the gateway's own API
// (GET /queue, GET /jobs, GET /metrics) with the bearer token the user gives it once.
package ui

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed static
var files embed.FS

// static is the files' tree, rooted at the page's directory.
var static = func() fs.FS {
	sub, err := fs.Sub(files, "static")
	if err != nil {
		panic(err) // the embed directive guarantees the directory
	}
	return sub
}()

// Prefix is the path the page is served under.
const Prefix = "/ui/"

// ContentSecurityPolicy lets the page load only its own script and style and talk only to
// foreman: job fields come from users, and an injected script must not run or phone out.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
	"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// IsStatic reports whether path is one of the page's files (or the /ui redirect), which
// need no token: they hold no data, and the API calls the page makes carry the token.
func IsStatic(path string) bool {
	if path == "/ui" || path == Prefix {
		return true
	}
	name, ok := strings.CutPrefix(path, Prefix)
	if !ok || name == "" || strings.Contains(name, "/") {
		return false
	}
	fi, err := fs.Stat(static, name)
	return err == nil && fi.Mode().IsRegular()
}

// Handler serves the page's files under Prefix, with the security headers every answer
// carries. It is meant for "GET /ui/"; "GET /ui" should redirect to Prefix.
func Handler() http.Handler {
	files := http.StripPrefix(Prefix, http.FileServerFS(static))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", ContentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// Files are the page's files (index.html, app.js, style.css).
func Files() fs.FS { return static }
