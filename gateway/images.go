package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// checkImageRequest refuses an image route's body as Ollama's image middlewares do,
// before anything else is looked at (v0.17.4 ImageGenerationsMiddleware,
// ImageEditsMiddleware): no prompt, then no model, then an edit without an image or with
// one that is no base64 data URL. Such a call is refused at once, not queued to be
// refused in its turn. The body's first JSON value is read, as those middlewares read it
// (null with more after it too: no prompt). A body that does not decode is left to
// parseInference; members of the wrong type are Ollama's to refuse.
func checkImageRequest(kind broker.Kind, body []byte) error {
	var req struct {
		Model  any `json:"model"`
		Prompt any `json:"prompt"`
		Image  any `json:"image"`
	}
	if !kind.Image() || json.NewDecoder(bytes.NewReader(body)).Decode(&req) != nil {
		return nil
	}
	empty := func(v any) bool { return v == nil || v == "" }
	switch {
	case empty(req.Prompt):
		return badRequest("prompt is required")
	case empty(req.Model):
		return badRequest("model is required")
	case kind != broker.KindOpenAIImageEdits:
		return nil
	case empty(req.Image):
		return badRequest("image is required")
	}
	if img, ok := req.Image.(string); ok {
		if err := ollama.CheckImageURL(img); err != nil {
			return badRequest("invalid image: " + err.Error())
		}
	}
	return nil
}

// refuseNoImages refuses an image route's call for a model whose capabilities say it
// makes no images: Ollama would run it as text and answer an empty 200 (ADR-0067). A
// model whose capabilities cannot be read is let through.
func (s *Server) refuseNoImages(ctx context.Context, kind broker.Kind, model string) error {
	if !kind.Image() {
		return nil
	}
	caps, err := s.capabilities(ctx, model)
	if err != nil || slices.Contains(caps, "image") {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return nil
	}
	return badRequest(fmt.Sprintf("model %q makes no images: it is not an image generation model (its capabilities: %v)", clipInput(model), caps))
}
