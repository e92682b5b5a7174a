package gateway

import "net/http"

// queuedRoutes registers the routes that run as jobs through the queue.
func (s *Server) queuedRoutes(mux *http.ServeMux) {}
