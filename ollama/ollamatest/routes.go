package ollamatest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// handler serves one route; f is the injected failure that must happen
// during the response (DropMidStream, StallMidStream, StreamNoDone, StreamError), or nil.
type handler func(w http.ResponseWriter, r *http.Request, body []byte, f *Failure)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	h := func(pattern string, fn handler) { mux.Handle(pattern, s.wrap(fn)) }
	h("GET /{$}", s.handleRoot)
	h("GET /api/version", s.handleVersion)
	h("GET /api/tags", s.handleTags)
	h("GET /api/ps", s.handlePs)
	h("POST /api/show", s.handleShow)
	h("POST /api/chat", s.handleChat)
	h("POST /api/generate", s.handleGenerate)
	h("POST /api/embed", s.handleEmbed)
	h("POST /api/embeddings", s.handleEmbeddings)
	h("POST /api/pull", s.handlePull)
	h("POST /api/push", s.handlePush)
	h("POST /api/create", s.handleCreate)
	h("POST /api/copy", s.handleCopy)
	h("DELETE /api/delete", s.handleDelete)
	h("HEAD /api/blobs/{digest}", s.handleBlobHead)
	h("POST /api/blobs/{digest}", s.handleBlobPost)
	h("POST /v1/chat/completions", s.handleOpenAIChat)
	h("POST /v1/completions", s.handleOpenAICompletion)
	h("POST /v1/embeddings", s.handleOpenAIEmbeddings)
	h("POST /v1/responses", s.handleResponses)
	h("POST /v1/messages", s.handleMessages)
	h("POST /v1/images/generations", s.handleImages)
	h("POST /v1/images/edits", s.handleImageEdits)
	h("GET /v1/models", s.handleOpenAIModels)
	h("GET /v1/models/{model...}", s.handleOpenAIModel)
	h("GET /api/experimental/aliases", s.handleAliasesList)
	h("POST /api/experimental/aliases", s.handleAliasCreate)
	h("DELETE /api/experimental/aliases", s.handleAliasDelete)
	return mux
}

// isInference reports whether path runs a model (counted by WaitStarted,
// targeted by FailNext).
func isInference(path string) bool {
	switch path {
	case "/api/chat", "/api/generate", "/api/embed", "/api/embeddings",
		"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
		"/v1/responses", "/v1/messages", "/v1/images/generations", "/v1/images/edits":
		return true
	}
	return false
}

// wrap records the call, applies SetDown and injected failures, then runs fn.
func (s *Server) wrap(fn handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		model := ""
		if len(bytes.TrimSpace(body)) > 0 {
			if m, err := ollama.ModelOf(body); err == nil {
				model = ollama.NormalizeModel(m)
			}
		}
		s.mu.Lock()
		idx := len(s.calls)
		s.calls = append(s.calls, Call{Method: r.Method, Path: r.URL.Path, Model: model, Started: time.Now(), Body: body,
			RawPath: r.URL.EscapedPath(), RawQuery: r.URL.RawQuery, Header: r.Header.Clone()})
		var f *Failure
		if s.down != nil {
			down := *s.down
			f = &down
		} else {
			f = s.takeFailureLocked(r.URL.Path)
		}
		if f != nil {
			s.calls[idx].Failure = f.String()
			f.gone = r.Context().Done()
		}
		s.notifyLocked()
		s.mu.Unlock()

		canceled := false
		defer func() {
			s.mu.Lock()
			s.calls[idx].Finished = true
			s.calls[idx].Ended = time.Now()
			s.calls[idx].Canceled = canceled
			s.notifyLocked()
			s.mu.Unlock()
		}()

		if !corsAllowed(w, r) {
			return
		}
		if f != nil {
			switch f.kind {
			case kindStatus:
				if streamedCompat(r.URL.Path, body) {
					streamHeaders(w) // the chat handler fails behind the middleware that set them
				}
				statusWriter(r.URL.Path)(w, f.code, f.msg)
				return
			case kindAnswer:
				w.Header().Set("Content-Type", f.ctype)
				w.WriteHeader(f.code)
				_, _ = w.Write([]byte(f.msg))
				return
			case kindDrop:
				dropConn(w)
				return
			case kindNotOllama:
				w.Header().Set("Content-Type", "text/html; charset=utf-8")
				_, _ = io.WriteString(w, "<!doctype html><html><body>It works!</body></html>\n")
				return
			case kindHang:
				<-f.gone
				canceled = true
				return
			case kindDrip:
				drip(w, r, f)
				canceled = true
				return
			case kindSlow:
				if sleepCtx(r.Context(), f.delay) != nil {
					canceled = true
					return
				}
				f = nil
			}
		}
		fn(w, r, body, f)
		canceled = r.Context().Err() != nil
	})
}

// corsAllowed is Ollama's CORS check (gin-contrib/cors with the default OLLAMA_ORIGINS): a
// foreign Origin is answered 403 with no body, an allowed one gets its CORS headers.
func corsAllowed(w http.ResponseWriter, r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || origin == "http://"+r.Host || origin == "https://"+r.Host {
		return true
	}
	if !defaultOrigin(origin) {
		w.WriteHeader(http.StatusForbidden)
		return false
	}
	w.Header().Set("Access-Control-Allow-Origin", origin)
	w.Header().Add("Vary", "Origin")
	return true
}

// defaultOrigin reports whether Ollama allows origin when OLLAMA_ORIGINS is not set.
func defaultOrigin(origin string) bool {
	scheme, host, ok := strings.Cut(origin, "://")
	if !ok {
		return false
	}
	switch scheme {
	case "app", "file", "tauri", "vscode-webview", "vscode-file":
		return true
	case "http", "https":
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		return host == "localhost" || host == "127.0.0.1" || host == "0.0.0.0"
	}
	return false
}

// drip carries out Drip: a stream's headers, then f.msg every f.delay until the client
// leaves.
func drip(w http.ResponseWriter, r *http.Request, f *Failure) {
	if strings.HasPrefix(r.URL.Path, "/v1/") {
		streamHeaders(w)
	} else {
		w.Header().Set("Content-Type", ollama.ContentTypeNDJSON)
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	for {
		if _, err := io.WriteString(w, f.msg); err != nil {
			return
		}
		if rc.Flush() != nil || sleepCtx(r.Context(), f.delay) != nil {
			return
		}
	}
}

// dropConn closes the client's TCP connection without a (further) response.
func dropConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler) // HTTP/2 or a wrapped writer: abort the stream instead
	}
	conn.Close()
}

// writeJSON writes v as Ollama's gin does (application/json, no trailing newline).
// With DropMidStream it sends half the body and cuts the connection.
func writeJSON(w http.ResponseWriter, code int, v any, f *Failure) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeBody(w, code, "application/json; charset=utf-8", b, f)
}

// writeEncoded writes v as Ollama's middlewares do with a json.Encoder: "application/json"
// without a charset, and a trailing newline. DropMidStream and StallMidStream as writeJSON.
func writeEncoded(w http.ResponseWriter, code int, v any, f *Failure) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeBody(w, code, "application/json", append(b, '\n'), f)
}

func writeBody(w http.ResponseWriter, code int, ctype string, b []byte, f *Failure) {
	w.Header().Set("Content-Type", ctype)
	if f != nil && (f.kind == kindDropMid || f.kind == kindStallMid) {
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(code)
		_, _ = w.Write(b[:len(b)/2])
		_ = http.NewResponseController(w).Flush()
		if f.kind == kindStallMid {
			<-f.gone
			return
		}
		dropConn(w)
		return
	}
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

// writeError writes Ollama's {"error": msg} body.
func writeError(w http.ResponseWriter, code int, msg string) {
	b, _ := json.Marshal(ollama.ErrorResponse{Error: msg})
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

// embedding is the capability modelFor and oaiModel are given by the embedding handlers:
// they take any model, and say a model they lack in words of their own.
const embedding = "embedding"

// notFound is what Ollama 0.17.4 answers for a model it lacks on the handler of
// capability (modelFor's): its embedding handlers suggest a pull (handleScheduleError),
// the others name the model in single quotes (GetModel's not found).
func notFound(model, capability string) string {
	if capability == embedding {
		return fmt.Sprintf("model %q not found, try pulling it first", model)
	}
	return fmt.Sprintf("model '%s' not found", model)
}

// streamWriter writes NDJSON lines or SSE events, flushing each, and carries
// out DropMidStream after a couple of frames.
type streamWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	f       *Failure
	sse     bool
	started bool
	frames  int
}

// errDropped stops a handler after DropMidStream cut the connection.
var errDropped = fmt.Errorf("ollamatest: connection dropped")

// errStalled stops a handler after StallMidStream held its stream until the client left.
var errStalled = fmt.Errorf("ollamatest: stream stalled")

// dropAfterFrames is how many frames DropMidStream and StallMidStream let through.
const dropAfterFrames = 2

func newStreamWriter(w http.ResponseWriter, f *Failure, sse bool) *streamWriter {
	return &streamWriter{w: w, rc: http.NewResponseController(w), f: f, sse: sse}
}

func (sw *streamWriter) frame(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return sw.raw(b)
}

func (sw *streamWriter) raw(b []byte) error {
	if sw.sse {
		return sw.emit(append(append([]byte("data: "), b...), "\n\n"...))
	}
	return sw.emit(append(b, '\n'))
}

// event writes v as one named SSE event, "event: name\ndata: json\n\n", as Ollama's
// writeSSE does on /v1/responses and /v1/messages.
func (sw *streamWriter) event(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	out := make([]byte, 0, len(name)+len(b)+16)
	out = append(append(append(out, "event: "...), name...), "\ndata: "...)
	return sw.emit(append(append(out, b...), "\n\n"...))
}

// emit writes one framed frame and flushes it, or carries out DropMidStream and
// StallMidStream once dropAfterFrames frames are out.
func (sw *streamWriter) emit(out []byte) error {
	if !sw.started {
		sw.started = true
		if sw.sse {
			sw.w.Header().Set("Content-Type", ollama.ContentTypeSSE)
			sw.w.Header().Set("Cache-Control", "no-cache")
		} else {
			sw.w.Header().Set("Content-Type", ollama.ContentTypeNDJSON)
		}
		sw.w.WriteHeader(http.StatusOK)
	}
	if sw.f != nil && sw.f.kind == kindDropMid && sw.frames >= dropAfterFrames {
		_ = sw.rc.Flush()
		dropConn(sw.w)
		return errDropped
	}
	if sw.f != nil && sw.f.kind == kindStallMid && sw.frames >= dropAfterFrames {
		_ = sw.rc.Flush()
		<-sw.f.gone
		return errStalled
	}
	if _, err := sw.w.Write(out); err != nil {
		return err
	}
	sw.frames++
	return sw.rc.Flush()
}

// noDone reports whether the final frame must be left out (StreamNoDone, StreamError).
func (sw *streamWriter) noDone() bool {
	return sw.f != nil && (sw.f.kind == kindNoDone || sw.f.kind == kindStreamErr)
}

// streamErr sends the error frame of StreamError, if that is the failure; v builds it.
func (sw *streamWriter) streamErr(v func(msg string) any) {
	if sw.f != nil && sw.f.kind == kindStreamErr {
		_ = sw.frame(v(sw.f.msg))
	}
}

func nativeError(msg string) any { return map[string]string{"error": msg} }

func openAIStreamError(msg string) any {
	return map[string]any{"error": map[string]string{"message": msg, "type": "api_error"}}
}

// modelFor gets the served model from the request, with Ollama's error replies;
// capability is the handler's: "chat", "generate", embedding, or "" (show and the model
// management routes). A name Ollama cannot parse (blank too) is its generate handler's
// 404 "model '<name>' not found" and any other handler's 400 "model is required"
// (v0.17.4 server/routes.go).
func (s *Server) modelFor(w http.ResponseWriter, name, capability string) (Model, bool) {
	return s.modelOf(w, name, capability, true)
}

// modelOf is modelFor that refuses a model without capability only when refuse is set:
// Ollama's chat and generate handlers unload a model (an empty call with keep_alive 0)
// before they look at what it can do, an embedding model's too.
func (s *Server) modelOf(w http.ResponseWriter, name, capability string, refuse bool) (Model, bool) {
	completes := capability == "chat" || capability == "generate"
	if strings.TrimSpace(name) == "" || completes && !ollama.ValidModelName(name) {
		if capability == "generate" {
			writeError(w, http.StatusNotFound, notFound(name, capability))
		} else {
			writeError(w, http.StatusBadRequest, "model is required")
		}
		return Model{}, false
	}
	lookup := name
	if completes {
		lookup = s.resolveAlias(name) // Ollama's chat and generate read aliases, the others not
	}
	m, ok := s.findModel(lookup)
	if !ok {
		writeError(w, http.StatusNotFound, notFound(name, capability))
		return Model{}, false
	}
	// A model without "completion" is refused by the chat handler (an image generation
	// model's too: only the generate handler runs one, apart).
	if refuse && completes && (m.Embedding || m.Image && capability == "chat") {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%q does not support %s", name, capability))
		return Model{}, false
	}
	return m, true
}
