package gateway

import "net/http"

// jobRoutes registers the async /jobs API.
func (s *Server) jobRoutes(mux *http.ServeMux) {}
