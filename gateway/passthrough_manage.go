package gateway

import (
	"bytes"
	"context"
	"net/http"
	"net/url"
	"time"
)

// handleManage relays model management (pull, push, create, copy, delete). Progress
// streams are relayed line by line as the target writes them. After a change to the
// installed models the inventory polls at once, so /api/tags and the unknown-model check
// see the change without waiting for the next poll.
func (s *Server) handleManage(w http.ResponseWriter, r *http.Request) {
	body, err := s.readBody(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if len(bytes.TrimSpace(body)) == 0 {
		s.writeError(w, r, badRequest("missing request body"))
		return
	}
	if err := validJSONObject(body); err != nil {
		s.writeError(w, r, err)
		return
	}
	status := s.relay(w, r, r.Method, targetPath(r.URL.EscapedPath(), r.URL.RawQuery), bytes.NewReader(body))
	if status/100 == 2 && r.URL.Path != "/api/push" {
		s.refreshAfterChange(r.Context())
	}
}

// handleBlob relays HEAD and POST /api/blobs/{digest}. An upload is streamed to the
// target as it arrives, never buffered, and has no body limit: model layers are GBs.
func (s *Server) handleBlob(w http.ResponseWriter, r *http.Request) {
	path := targetPath("/api/blobs/"+url.PathEscape(r.PathValue("digest")), r.URL.RawQuery)
	body := r.Body
	if r.Method == http.MethodHead {
		body = http.NoBody
	}
	s.relay(w, r, r.Method, path, body)
}

// refreshAfterChange re-polls the inventory, even if the client has already gone: the
// change happened on the target regardless.
func (s *Server) refreshAfterChange(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.inv.Refresh(ctx); err != nil {
		s.log.Warn("inventory refresh after a model change", "err", err)
	}
}
