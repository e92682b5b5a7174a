package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// handleModelRequest serves /api/show, /api/embed, /api/embeddings and /v1/embeddings:
// the body must name a model the target has, then it goes straight to the target.
// Embeddings are never queued: they are cheap, the embedding model stays loaded next to
// the chat model, and many may run at once (ADR-0013).
func (s *Server) handleModelRequest(w http.ResponseWriter, r *http.Request) {
	body, err := s.readBody(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	model, err := requestModel(body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.requireModel(r.Context(), model); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.relay(w, r, http.MethodPost, targetPath(r.URL.EscapedPath(), r.URL.RawQuery), bytes.NewReader(body))
}

// handleOpenAIModel serves GET /v1/models/{model}.
func (s *Server) handleOpenAIModel(w http.ResponseWriter, r *http.Request) {
	model := r.PathValue("model")
	if err := s.requireModel(r.Context(), model); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.relay(w, r, r.Method, targetPath("/v1/models/"+url.PathEscape(model), r.URL.RawQuery), http.NoBody)
}

// requestModel returns the model a JSON body names, or a 400 saying what is wrong.
func requestModel(body []byte) (string, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return "", badRequest("missing request body")
	}
	if err := validJSONObject(body); err != nil {
		return "", err
	}
	model, err := ollama.ModelOf(body)
	if err != nil {
		return "", badRequest("invalid JSON body: " + err.Error())
	}
	if strings.TrimSpace(model) == "" {
		return "", badRequest("model is required")
	}
	return model, nil
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

// requireModel returns nil when the target is known to have model, after one re-poll
// if the inventory does not list it (it may have been pulled since the last poll). It
// claims "not found" only on a fresh, successful poll: with the target unreachable the
// request goes through, and the connection failure becomes the client's 502.
func (s *Server) requireModel(ctx context.Context, model string) error {
	if s.inv.HasModel(model) {
		return nil
	}
	if err := s.inv.Refresh(ctx); err != nil {
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
