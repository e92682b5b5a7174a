package gateway

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"time"
)

// handleManage relays model management (pull, push, create, copy, delete). Progress
// streams are relayed line by line as the target writes them. After a change to the
// installed models the inventory polls at once, so /api/tags and the unknown-model check
// see the change without waiting for the next poll.
func (s *Server) handleManage(w http.ResponseWriter, r *http.Request) {
	body, hold, err := s.readBody(w, r)
	defer hold.release()
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
	status := s.relay(w, r, r.Method, targetPath(r.URL.EscapedPath(), r.URL.RawQuery), bytes.NewReader(body), hold.release)
	if status/100 == 2 && r.URL.Path != "/api/push" {
		s.refreshAfterChange(r.Context())
	}
}

// handleBlob relays HEAD and POST /api/blobs/{digest}. An upload is streamed to the
// target as it arrives, never buffered, and has no body limit: model layers are GBs.
//
// The digest must be Ollama's own form, checked before anything is sent: a digest is a
// file name on the target, and anything else ("..%2F..%2Fapi%2Fchat") is at best refused
// there and at worst a path of its own to a proxy in front of it.
func (s *Server) handleBlob(w http.ResponseWriter, r *http.Request) {
	digest := r.PathValue("digest")
	if !blobDigest.MatchString(digest) {
		s.writeError(w, r, badRequest(fmt.Sprintf("invalid digest format %q: want sha256:<64 hex digits>", digest)))
		return
	}
	path := targetPath("/api/blobs/"+url.PathEscape(digest), r.URL.RawQuery)
	body := r.Body
	if r.Method == http.MethodHead {
		body = http.NoBody
	}
	s.relay(w, r, r.Method, path, body, nil)
}

// blobDigest is what Ollama 0.17 takes as a blob digest (manifest.BlobsPath).
var blobDigest = regexp.MustCompile(`^sha256[:-][0-9a-fA-F]{64}$`)

// refreshAfterChange re-polls the inventory, even if the client has already gone: the
// change happened on the target regardless. The answer's end waits for it, so a target
// that leaves its checks unanswered just now is not polled (the inventory's next poll
// sees the change), and one whose polls go unanswered is waited for a check's bound.
func (s *Server) refreshAfterChange(ctx context.Context) {
	if s.downStands() {
		return
	}
	if err := s.refreshOwn(context.WithoutCancel(ctx), 10*time.Second); err != nil {
		s.log.Warn("inventory refresh after a model change", "err", err)
	}
}
