package gateway

import (
	"net/http"

	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/ui"
)

// uiRoutes serves the status page (package ui): its static files need no token, the API
// calls it makes carry one (authenticate exempts exactly ui.IsStatic paths).
func (s *Server) uiRoutes(mux *http.ServeMux) {
	files := ui.Handler()
	mux.HandleFunc("GET "+ui.Prefix, func(w http.ResponseWriter, r *http.Request) {
		if !ui.IsStatic(r.URL.Path) {
			// No such file: the JSON 404 of every other unknown path, not a file server's text.
			s.writeError(w, r, refuse(ErrNoRoute, "404 page not found"))
			return
		}
		files.ServeHTTP(w, r)
	})
	mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, ui.Prefix, http.StatusMovedPermanently)
	})
}
