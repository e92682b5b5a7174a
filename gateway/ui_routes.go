package gateway

import (
	"net/http"

	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/ui"
)

// uiRoutes serves the status page (package ui): its static files need no token, the API
// calls it makes carry one (authenticate exempts exactly ui.IsStatic paths).
func (s *Server) uiRoutes(mux *http.ServeMux) {
	mux.Handle("GET "+ui.Prefix, ui.Handler())
	mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, ui.Prefix, http.StatusMovedPermanently)
	})
}
