package gateway

import (
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"strings"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// ollamaRoutes registers the routes served straight from the target or the inventory.
// None of them is queued: metadata and embeddings run concurrently with the worker's
// job (ADR-0013), and model management is the operator's business.
//
// A "GET" pattern also answers HEAD, as Ollama does for /, /api/version and /api/tags;
// on its other GET routes Ollama's router answers HEAD 405 (headRefused).
func (s *Server) ollamaRoutes(mux *http.ServeMux) {
	for pattern := range headRefused {
		mux.HandleFunc(pattern, s.refuseHead)
	}
	// inventory_routes.go: answered from the inventory or a live fetch.
	mux.HandleFunc("GET /{$}", s.handleRoot)
	mux.HandleFunc("GET /api/tags", s.handleTags)
	mux.HandleFunc("GET /api/ps", s.handlePs)

	// Raw relays with nothing to check.
	mux.HandleFunc("GET /api/version", s.handleVersion)
	mux.HandleFunc("GET /api/status", s.relayBodyless)
	mux.HandleFunc("GET /v1/models", s.handleOpenAIModels)
	mux.HandleFunc("GET /v1/models/{model...}", s.handleOpenAIModel)

	// passthrough_models.go: a known model is required first.
	mux.HandleFunc("POST /api/show", s.handleModelRequest)
	mux.HandleFunc("POST /api/embed", s.handleModelRequest)
	mux.HandleFunc("POST /api/embeddings", s.handleModelRequest)
	mux.HandleFunc("POST /v1/embeddings", s.handleModelRequest)

	// passthrough_manage.go: model management, and the model aliases (ADR-0068); the
	// changes for FOREMAN_MODEL_ADMINS' programs only, when it names some (ADR-0124).
	mux.HandleFunc("POST /api/pull", s.modelAdmin(s.handleManage))
	mux.HandleFunc("POST /api/push", s.modelAdmin(s.handleManage))
	mux.HandleFunc("POST /api/create", s.modelAdmin(s.handleManage))
	mux.HandleFunc("POST /api/copy", s.modelAdmin(s.handleManage))
	mux.HandleFunc("DELETE /api/delete", s.modelAdmin(s.handleManage))
	mux.HandleFunc("GET /api/experimental/aliases", s.relayBodyless)
	mux.HandleFunc("POST /api/experimental/aliases", s.modelAdmin(s.handleManage))
	mux.HandleFunc("DELETE /api/experimental/aliases", s.modelAdmin(s.handleManage))
	mux.HandleFunc("HEAD /api/blobs/{digest}", s.handleBlob)
	mux.HandleFunc("POST /api/blobs/{digest}", s.modelAdmin(s.handleBlob))
}

// headRefused are the HEAD patterns of Ollama's GET routes that its router (v0.17.4
// server/routes.go: HEAD only for /, /api/version, /api/tags and /api/blobs) answers 405
// "405 method not allowed", with Allow: GET. Each is a router miss (refuseHead), and no
// route when the others' Allow or a trailing slash's redirect is worked out.
var headRefused = map[string]bool{
	"HEAD /api/ps":                   true,
	"HEAD /api/status":               true,
	"HEAD /api/experimental/aliases": true,
	"HEAD /v1/models":                true,
	"HEAD /v1/models/{model...}":     true,
}

// refuseHead answers HEAD on a GET route of Ollama's that takes none, as its router does:
// 405 with Allow, or 404 for a path its router has no route for: one with a trailing
// slash, or a model name of several segments (the one-model route's wildcard takes
// "/v1/models/x/" and "/v1/models/a/b", Ollama's one-segment :model takes neither).
func (s *Server) refuseHead(w http.ResponseWriter, r *http.Request) {
	if strings.HasSuffix(r.URL.Path, "/") || strings.Contains(r.PathValue("model"), "/") {
		writeRouterMiss(w, http.StatusNotFound, "404 page not found")
		return
	}
	s.handleNotFound(w, r)
}

// relayBodyless relays a GET or HEAD to the same path on the target.
func (s *Server) relayBodyless(w http.ResponseWriter, r *http.Request) {
	s.relay(w, r, r.Method, targetPath(r.URL.EscapedPath(), r.URL.RawQuery), http.NoBody, nil)
}

// handleVersion relays GET /api/version to the own target, or, while it does not answer
// (its polls go unanswered, or a check's verdict stands), to another Mac that does:
// clients ask it to see whether "Ollama" is there (Open WebUI checks its connection so),
// and through this foreman the other Macs serve.
func (s *Server) handleVersion(w http.ResponseWriter, r *http.Request) {
	if !s.inv.Snapshot().DownSince.IsZero() || s.downStands() {
		if c := s.otherClientWhere(r.Context(), func(broker.Target) bool { return true }); c != nil {
			s.relayTo(c, w, r, r.Method, targetPath(r.URL.EscapedPath(), r.URL.RawQuery), http.NoBody, nil)
			return
		}
	}
	s.relayBodyless(w, r)
}

// targetPath is the path (and query) a pass-through request takes on the target. The
// query is the client's as it came, a "#" in it included: the ollama client sends it
// unparsed.
func targetPath(escapedPath, rawQuery string) string {
	if rawQuery == "" {
		return escapedPath
	}
	return escapedPath + "?" + rawQuery
}

// relay sends the request to the target and copies the answer back unchanged: status,
// headers other than hop-by-hop ones, and the body byte for byte, flushed after every
// read so progress streams (pull, push, create) reach the client as Ollama writes them.
// A target that cannot be reached is a 502 before any byte is written; a body cut short
// afterwards (the target went, or the own one hung as a whole past SyncOutageWait: see
// doOwn) aborts the client's response so it cannot pass for a complete one. It
// returns the target's status, or 0 when the request never reached it. sent, when not
// nil, is called once the target has answered (or failed) the request, when its body is
// no longer needed: a body held in memory goes back to the budget then, not after the
// answer, which may stream for minutes (a pull).
func (s *Server) relay(w http.ResponseWriter, r *http.Request, method, path string, body io.Reader, sent func()) int {
	return s.relayTo(s.target, w, r, method, path, body, sent)
}

// relayTo is relay to target c.
func (s *Server) relayTo(c ollama.Client, w http.ResponseWriter, r *http.Request, method, path string, body io.Reader, sent func()) int {
	var (
		resp *http.Response
		err  error
	)
	if c == ollama.Client(s.target) {
		// The own target's outage bounds the wait for its answer, as a sync call's, and
		// a body that stalls in it.
		var release func()
		resp, release, err = s.doOwn(r.Context(), method, path, forwardHeader(r.Header), body)
		defer release()
	} else {
		resp, err = c.Do(r.Context(), method, path, forwardHeader(r.Header), body)
	}
	if sent != nil {
		sent()
	}
	if err != nil {
		// A body whose own read failed says why: net/http cancels the request as that
		// read fails, so the call's error says only that it was canceled.
		if f, ok := body.(failingBody); ok && f.failure() != nil {
			err = f.failure()
		}
		s.writeError(w, r, err)
		return 0
	}
	defer resp.Body.Close()
	copyHeader(w.Header(), resp.Header)
	if method == http.MethodHead {
		w.WriteHeader(resp.StatusCode)
		return resp.StatusCode
	}
	// The body goes out chunked: flushed per read, it ends when the handler returns, so a
	// caller may still act (refresh the inventory) before the client sees the end, and a
	// body cut short cannot pass for a complete one.
	w.Header().Del("Content-Length")
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return resp.StatusCode // the client left; closing resp.Body tells the target
			}
			_ = rc.Flush()
		}
		if errors.Is(rerr, io.EOF) {
			return resp.StatusCode
		}
		if rerr != nil {
			if r.Context().Err() == nil {
				s.log.Warn("pass-through response cut short", "method", r.Method, "path", r.URL.Path, "err", rerr)
			}
			panic(http.ErrAbortHandler)
		}
	}
}

// failingBody is a request body that can fail the call it feeds (progressBody), with the
// error to answer then; nil while it has not.
type failingBody interface{ failure() error }

// hopHeaders belong to one connection and are never relayed (RFC 9110 §7.6.1).
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopHeaders deletes hop-by-hop headers, including those the Connection header names.
func removeHopHeaders(h http.Header) {
	for _, v := range h.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}

// browserHeaders are what a browser says about the page that sends a request. foreman
// judges the page itself (browserPolicy); the target would judge it again by its own
// OLLAMA_ORIGINS (Ollama answers 403 to an Origin outside it) and has no use for the
// page's cookies or address.
var browserHeaders = []string{"Origin", "Referer", "Cookie"}

// forwardHeader is the client's header as the target should see it: without hop-by-hop
// headers, without the browser's page headers, and without foreman's own token, as a
// bearer token or an X-Api-Key (the target's token, if any, is added by the ollama
// client).
func forwardHeader(in http.Header) http.Header {
	h := in.Clone()
	removeHopHeaders(h)
	for _, name := range browserHeaders {
		h.Del(name)
	}
	h.Del("Authorization")
	h.Del("X-Api-Key")
	return h
}

// copyHeader copies the target's response header to dst, minus hop-by-hop headers, the
// target's CORS headers (which pages may read the answer is foreman's to say,
// browserPolicy has set its own, not what the target allows) and its cookies: a proxy in
// front of the Mac may hand foreman a session for the credentials foreman sends it
// (FOREMAN_OLLAMA_URL's, FOREMAN_OLLAMA_TOKEN), which is no caller's to have.
func copyHeader(dst, src http.Header) {
	h := src.Clone()
	removeHopHeaders(h)
	h.Del("Set-Cookie")
	for k, vs := range h {
		switch {
		case strings.HasPrefix(k, "Access-Control-"):
			continue
		case k == "Vary":
			dst[k] = append(dst[k], vs...) // foreman's "Vary: Origin" stays
			continue
		}
		dst[k] = vs
	}
}
