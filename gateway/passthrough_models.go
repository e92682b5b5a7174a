package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// handleModelRequest serves /api/show, /api/embed, /api/embeddings and /v1/embeddings:
// the body must name a model a target has, then it goes straight to that target (the
// own one first, ADR-0029).
// Embeddings on an embedding model are not queued: they are cheap, the embedding model
// stays loaded next to the chat model, and many may run at once (ADR-0013). On any other
// model they would load it beside the worker's jobs, so they run as jobs (ADR-0053).
func (s *Server) handleModelRequest(w http.ResponseWriter, r *http.Request) {
	in := time.Now()
	body, hold, err := s.readBody(w, r)
	defer hold.release()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	model, body, opts, err := requestModel(r.URL.Path, body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if refused := embedOptionsRefused(r.URL.Path, opts); refused != nil {
		// After the model's 404, as Ollama looks the model up first; queued or not.
		if !s.inv.HasModel(model) && !s.otherHas(r.Context(), model) {
			if err := s.requireModel(r.Context(), model); err != nil {
				s.writeError(w, r, err)
				return
			}
		}
		s.writeError(w, r, refused)
		return
	}
	if kind, ok := embedKind(r.URL.Path); ok && s.queuesEmbedding(r.Context(), model) {
		s.serveQueued(w, r, kind, body, hold, in)
		return
	}
	own := s.relayModel(w, r, http.MethodPost, model, targetPath(r.URL.EscapedPath(), r.URL.RawQuery), body, hold.release)
	if _, embeds := embedKind(r.URL.Path); embeds && own {
		// It may have loaded the embedding model in place of the worker's: the worker
		// reads /api/ps again before counting on the model it ran last.
		if q, ok := s.cfg.Queue.(besideUser); ok {
			q.TargetUsedBeside()
		}
	}
}

// besideUser is a QueueViewer (the worker) told of the calls that reach its target
// beside its jobs and may load a model there.
type besideUser interface{ TargetUsedBeside() }

// handleOpenAIModel serves GET /v1/models/{model}. A GET with a trailing slash
// ("/v1/models/", "/v1/models/tiny-a/") is redirected as Ollama's router does, whose
// one-segment :model never takes the slash into the name.
func (s *Server) handleOpenAIModel(w http.ResponseWriter, r *http.Request) {
	model := r.PathValue("model")
	if r.Method == http.MethodGet && (model == "" || strings.HasSuffix(model, "/")) {
		if target, ok := s.withoutTrailingSlash(r); ok {
			http.Redirect(w, r, target, http.StatusMovedPermanently)
			return
		}
	}
	s.relayModel(w, r, r.Method, model, targetPath("/v1/models/"+url.PathEscape(model), r.URL.RawQuery), nil, nil)
}

// requestModel returns the model a JSON body names on path, from one decode of the body,
// or a 400 saying what is wrong. It reads the member the target reads there (Ollama
// 0.17, server/routes.go): "model", and on /api/show the legacy "name" when "model" is
// empty; the embedding routes know no "name". opts are the body's "options", which an
// embedding route judges once the model is known (embedOptionsRefused).
func requestModel(path string, body []byte) (model string, read []byte, opts broker.LoadOptions, err error) {
	if path == "/v1/embeddings" {
		// Ollama's OpenAI layer decodes the body into a type of its own, and checks it
		// before its handler reads the model (v0.17.4 EmbeddingsMiddleware, ADR-0142).
		model, read, err = openAIEmbedModel(body)
		return model, read, opts, err
	}
	var req struct {
		Model   string             `json:"model"`
		Name    string             `json:"name"`
		Options broker.LoadOptions `json:"options"`
	}
	// "decode model field: " is how these routes have always worded a member of the
	// wrong type.
	if read, err = decodeObject(body, &req, "decode model field: "); err != nil {
		return "", nil, opts, err
	}
	if kind, ok := embedKind(path); ok {
		if err := optionsNotAnObject(kind, req.Options); err != nil {
			return "", nil, opts, err
		}
	}
	model = req.Model
	if model == "" && path == "/api/show" {
		model = req.Name
	}
	if strings.TrimSpace(model) == "" {
		return "", nil, opts, handlerRefusal("model is required")
	}
	return model, read, req.Options, nil
}

// embedOptionsRefused is the 400 for options (requestModel's) of a type Ollama refuses
// (its 500) in an embedding route's body, nil for none or another route. Ollama's embed
// handlers look the model up before they read the options (scheduleRunner), so it is
// answered once the model is known to be there: a model no target has is the 404 first.
func embedOptionsRefused(path string, opts broker.LoadOptions) error {
	kind, ok := embedKind(path)
	if !ok || !kind.ReadsOptions() {
		return nil
	}
	if err := opts.Refused(); err != nil {
		return badRequest(err.Error())
	}
	return nil
}

// decodeObject decodes body, which must be one JSON object or null, into v (a pointer to a
// struct) in one pass, and returns the body as Ollama reads it: body itself, or the
// object it begins with when more follows (leadingObject). Anything else is a 400: no
// object worded as validJSONObject words it, a member of the wrong type as "invalid JSON
// body: " + context + the decoder's text, a syntax error as "invalid JSON body: " + the
// decoder's text.
func decodeObject(body []byte, v any, context string) ([]byte, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, badRequest("missing request body")
	}
	if jsonNull(body) {
		// Ollama's router decodes a body into its handler's struct, which null leaves as
		// it is: the handler answers it as it answers {} ("model is required", or on the
		// generate routes 404 "model '' not found").
		return body, nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		var (
			te *json.UnmarshalTypeError
			se *json.SyntaxError
		)
		if errors.As(err, &se) {
			// Looked for only now: a body that decodes whole pays no second pass.
			if obj, ok := leadingObject(body); ok {
				return decodeObject(obj, v, context)
			}
		}
		switch {
		case !errors.As(err, &te):
			return nil, badRequest("invalid JSON body: " + err.Error())
		case te.Field == "":
			// No object at all: said as the object check says it, not in terms of v.
			return nil, validJSONObject(body)
		}
		return nil, badRequest("invalid JSON body: " + context + err.Error())
	}
	return body, nil
}

// leadingObject returns the JSON object body begins with when more than white space
// follows it (a second object, a stray bracket, a NUL): that object is all Ollama reads
// of such a body. Its router's ShouldBindJSON decodes the first JSON value with a
// json.Decoder and never looks past it, so Ollama answers `{"model":"m","prompt":"hi"}
// x` as it answers the object, on its native, OpenAI and Anthropic routes alike; a
// client that works against Ollama must not get a 400 here. The rest is dropped:
// neither queued, stored nor sent on. ok is false for any other body.
func leadingObject(body []byte) (obj []byte, ok bool) {
	if trimmed := bytes.TrimLeft(body, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if dec.Decode(&struct{}{}) != nil {
		return nil, false
	}
	end := dec.InputOffset()
	if len(bytes.Trim(body[end:], " \t\r\n")) == 0 { // JSON's white space only: a U+00A0 is more
		return nil, false
	}
	return body[:end:end], true
}

// jsonNull reports whether body's first JSON value is null: the body Ollama's handlers,
// which decode the first value into a struct, take as an empty object, whatever follows
// it ("null x" too, as an object followed by more is its object: leadingObject). Only
// JSON's white space may come before it: a \v or a U+00A0 there is Ollama's 400, as for
// any other body a decoder cannot begin to read.
func jsonNull(body []byte) bool {
	if !bytes.HasPrefix(bytes.TrimLeft(body, " \t\r\n"), []byte("null")) {
		return false
	}
	var v json.RawMessage
	return json.NewDecoder(bytes.NewReader(body)).Decode(&v) == nil
}

// validJSONObject returns a 400 unless body is one JSON object.
func validJSONObject(body []byte) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		return badRequest("invalid JSON body: " + err.Error())
	}
	if obj == nil {
		return badRequest("invalid JSON body: expected an object")
	}
	return nil
}

// modelPollWait bounds requireModel's re-poll of a target that answered its last poll;
// one that did not gets outageProbe, and one that left an outage check unanswered just
// now none. Without a bound of its own the re-poll of a target that accepts and never
// answers took the inventory's PollTimeout (10s), the whole of a /jobs submit's time:
// the client got 504 "timed out" instead of the 502 that says why.
const modelPollWait = 5 * time.Second

// requireModel returns nil when the target is known to have model, after one re-poll
// if the inventory does not list it (it may have been pulled since the last poll). It
// claims "not found" only on a fresh, successful poll: with the target unreachable (or
// not answering the re-poll in time) the request goes through, and the connection
// failure becomes the client's 502.
func (s *Server) requireModel(ctx context.Context, model string) error {
	if s.inv.HasModel(model) {
		return nil
	}
	if s.downStands() {
		return nil // the re-poll would go unanswered too
	}
	wait := modelPollWait
	if snap := s.inv.Snapshot(); snap.Degraded || !snap.Polled {
		wait = s.outageChecks.probe
	}
	pctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if err := s.inv.Refresh(pctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return nil
	}
	if s.inv.HasModel(model) {
		return nil
	}
	return &ModelNotFoundError{Model: model}
}
