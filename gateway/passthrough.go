package gateway

import "net/http"

// ollamaRoutes registers the routes served straight from the target or the inventory.
func (s *Server) ollamaRoutes(mux *http.ServeMux) {}
