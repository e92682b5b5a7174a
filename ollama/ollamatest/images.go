package ollamatest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// imageRequest is the body of Ollama's OpenAI-compatible image routes (v0.17.4
// openai.ImageGenerationRequest and ImageEditRequest).
type imageRequest struct {
	Model  string `json:"model"`
	Prompt string `json:"prompt"`
	Size   string `json:"size"`
	Seed   *int64 `json:"seed"`
	Image  string `json:"image"` // edits only
}

func (s *Server) handleImages(w http.ResponseWriter, r *http.Request, body []byte, f *Failure) {
	s.image(w, r, body, f, false)
}

func (s *Server) handleImageEdits(w http.ResponseWriter, r *http.Request, body []byte, f *Failure) {
	s.image(w, r, body, f, true)
}

// image answers as Ollama's image middlewares over its generate handler do: the
// request's checks in their order (prompt, model, for an edit the image), a model not
// found, and then, for an image model, the picture as one JSON object once it is whole
// (the generation's progress is not sent on this route) under the NDJSON type generate
// sent its headers with; for a model that makes no images, Ollama's generate runs it as
// text and the middleware drops every line, so the answer is a 200 with an NDJSON type
// and no body. The picture is base64 of a text naming the model, prompt, size, seed and
// edited image: each request its own answer.
func (s *Server) image(w http.ResponseWriter, r *http.Request, body []byte, f *Failure, edit bool) {
	var req imageRequest
	if err := decodeBody(body, &req); err != nil {
		writeOAIError(w, http.StatusBadRequest, err.Error())
		return
	}
	switch {
	case req.Prompt == "":
		writeOAIError(w, http.StatusBadRequest, "prompt is required")
		return
	case req.Model == "":
		writeOAIError(w, http.StatusBadRequest, "model is required")
		return
	case edit && req.Image == "":
		writeOAIError(w, http.StatusBadRequest, "image is required")
		return
	}
	if edit {
		if err := ollama.CheckImageURL(req.Image); err != nil {
			writeOAIError(w, http.StatusBadRequest, "invalid image: "+err.Error())
			return
		}
	}
	m, ok := s.findModel(s.resolveAlias(req.Model))
	if !ok {
		// Ollama's generate says so, and the middleware wraps it as a 500's error, typed
		// api_error, under the 404.
		writeOAIErrorTyped(w, http.StatusNotFound, "api_error", fmt.Sprintf("model '%s' not found", req.Model))
		return
	}
	if m.Embedding {
		// Generate's error, wrapped by the middleware's writer as an api_error.
		writeOAIErrorTyped(w, http.StatusBadRequest, "api_error", fmt.Sprintf("%q does not support generate", req.Model))
		return
	}
	defer s.enter(false)()
	if _, ok := s.prepareWith(w, r, m, writeOAIError); !ok {
		return
	}
	// The steps of the generation, paced as tokens are.
	if err := s.generate(r.Context(), Reply(m.Name, req.Prompt, s.capTokens(s.cfg.Tokens)), nil); err != nil {
		return
	}
	// Ollama's generate has sent its headers (200, NDJSON) with the first step it
	// flushed, before the route's writer sets its own type: the answer keeps the NDJSON
	// type. For a model that makes no images the writer drops every line: no body.
	if !m.Image {
		writeBody(w, http.StatusOK, "application/x-ndjson", nil, f)
		return
	}
	seed := "none"
	if req.Seed != nil {
		seed = fmt.Sprint(*req.Seed)
	}
	picture := fmt.Sprintf("image of %s: %q size=%s seed=%s edited=%d bytes", m.Name, req.Prompt, req.Size, seed, len(req.Image))
	b, _ := json.Marshal(map[string]any{
		"created": s.cfg.Clock().Unix(),
		"data":    []map[string]string{{"b64_json": base64.StdEncoding.EncodeToString([]byte(picture))}},
	})
	writeBody(w, http.StatusOK, "application/x-ndjson", append(b, '\n'), f)
}

// imageLine is a line of Ollama's generate for an image model: its GenerateResponse
// with the image generation members (v0.17.4 api.GenerateResponse, in its order).
type imageLine struct {
	Model         string    `json:"model"`
	CreatedAt     time.Time `json:"created_at"`
	Response      string    `json:"response"`
	Done          bool      `json:"done"`
	DoneReason    string    `json:"done_reason,omitempty"`
	TotalDuration int64     `json:"total_duration,omitempty"`
	LoadDuration  int64     `json:"load_duration,omitempty"`
	Image         string    `json:"image,omitempty"`
	Completed     int64     `json:"completed,omitempty"`
	Total         int64     `json:"total,omitempty"`
}

// generateImage answers /api/generate for an image model as Ollama's
// handleImageGenerate does: streamed, a line per step (completed of total) and the
// picture in the last; not streamed, the last line alone.
func (s *Server) generateImage(w http.ResponseWriter, r *http.Request, req ollama.GenerateRequest, load time.Duration, now time.Time, f *Failure) {
	steps := s.capTokens(s.cfg.Tokens)
	picture := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "image of %s: %q", req.Model, req.Prompt))
	final := imageLine{Model: req.Model, CreatedAt: now, Done: true, DoneReason: "stop",
		TotalDuration: int64(load) + int64(steps)*int64(tokenCost), LoadDuration: int64(load),
		Image: picture, Completed: int64(steps), Total: int64(steps)}
	toks := make([]string, steps)
	if req.Stream != nil && !*req.Stream {
		if s.generate(r.Context(), toks, nil) != nil || nonStreamedFailure(w, f) {
			return
		}
		writeJSON(w, http.StatusOK, final, f)
		return
	}
	sw := newStreamWriter(w, f, false)
	step := 0
	err := s.generate(r.Context(), toks, func(string) error {
		step++
		return sw.frame(imageLine{Model: req.Model, CreatedAt: now, Completed: int64(step), Total: int64(steps)})
	})
	if err == nil && !sw.noDone() {
		_ = sw.frame(final)
	}
	if err == nil {
		sw.streamErr(nativeError)
	}
}
