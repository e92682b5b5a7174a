package gateway

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"sync"
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
	if err := validJSONObject(body); err != nil && !jsonNull(body) {
		// null goes on as it is: Ollama answers it as it answers {} (jsonNull).
		obj, ok := leadingObject(body)
		if !ok {
			s.writeError(w, r, err)
			return
		}
		body = obj // all Ollama reads of it
	}
	status := s.relay(w, r, r.Method, targetPath(r.URL.EscapedPath(), r.URL.RawQuery), bytes.NewReader(body), hold.release)
	if status/100 == 2 && r.URL.Path != "/api/push" {
		s.refreshAfterChange(r.Context())
	}
}

// handleBlob relays HEAD and POST /api/blobs/{digest}. An upload is streamed to the
// target as it arrives, never buffered, and has no body limit: model layers are GBs. It
// must keep coming, though (progressBody).
//
// The digest must be Ollama's own form, checked before anything is sent: a digest is a
// file name on the target, and anything else ("..%2F..%2Fapi%2Fchat") is at best refused
// there and at worst a path of its own to a proxy in front of it.
func (s *Server) handleBlob(w http.ResponseWriter, r *http.Request) {
	digest := r.PathValue("digest")
	if !blobDigest.MatchString(digest) {
		// Ollama's words (manifest.ErrInvalidDigestFormat), which its clients show.
		s.writeError(w, r, badRequest("invalid digest format"))
		return
	}
	path := targetPath("/api/blobs/"+url.PathEscape(digest), r.URL.RawQuery)
	var body io.Reader = http.NoBody
	if r.Method == http.MethodPost {
		pb := s.progressBody(w, r)
		defer pb.finish()
		body = pb
	}
	s.relay(w, r, r.Method, path, body, nil)
}

// progressBody is a request body passed on as it arrives, with no bound on its size nor
// on the time it takes, that must keep coming: a read that waits BodyReadTimeout for a
// byte ends in a 408 refusal. An upload that moves, however slowly, goes on; one that
// stalls ends, and with it the call to the target it feeds, instead of holding both for
// ever.
//
// The limit is a timer per read, not a deadline on the connection: a deadline left set
// would fail net/http's watch on the connection once the body has ended, which cancels
// the request and so the target's answer. Only a read that has waited the limit out gets
// one, in the past, which ends it; the stall is known before net/http cancels the
// request for it (failure), so the client learns why.
type progressBody struct {
	body    io.Reader
	rc      *http.ResponseController
	timeout time.Duration

	mu       sync.Mutex
	timer    *time.Timer // runs while a read waits
	reading  bool
	stalled  bool // a read waited timeout out
	finished bool // the handler returned: the connection may carry the next request
}

func (s *Server) progressBody(w http.ResponseWriter, r *http.Request) *progressBody {
	bodyTaken(r)
	return &progressBody{body: r.Body, rc: http.NewResponseController(w), timeout: s.cfg.BodyReadTimeout}
}

func (b *progressBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	switch {
	case b.finished:
		// The call to the target outlived the handler; the body is net/http's again.
		b.mu.Unlock()
		return 0, http.ErrBodyReadAfterClose
	case b.stalled:
		b.mu.Unlock()
		return 0, b.failure()
	}
	b.reading = true
	if b.timer == nil {
		b.timer = time.AfterFunc(b.timeout, b.stall)
	} else {
		b.timer.Reset(b.timeout)
	}
	b.mu.Unlock()
	n, err := b.body.Read(p)
	b.mu.Lock()
	b.reading = false
	b.timer.Stop()
	stalled := b.stalled
	b.mu.Unlock()
	if stalled && err != nil {
		err = b.failure()
	}
	return n, err
}

// stall ends the read that has waited the limit out.
func (b *progressBody) stall() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.reading || b.finished {
		return
	}
	b.stalled = true
	_ = b.rc.SetReadDeadline(time.Now())
}

// failure is the 408 refusal of a stalled body, nil while it has not stalled.
func (b *progressBody) failure() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.stalled {
		return nil
	}
	return refuse(ErrBodyTimeout, fmt.Sprintf("request body made no progress for %s", b.timeout))
}

// finish is called as the handler returns. A read still waiting then (the target
// answered before the body's end) is ended: net/http waits for it before it reads the
// connection's next request, which a later stall must not touch.
func (b *progressBody) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.reading {
		_ = b.rc.SetReadDeadline(time.Now())
	}
	b.finished = true
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
