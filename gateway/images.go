package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
// (null with more after it too: no prompt), into their request's types: a member of
// another type is their decoder's 400, in its words, before any of these checks. A body
// that is no object is left to parseInference.
func checkImageRequest(kind broker.Kind, body []byte) error {
	if !kind.Image() {
		return nil
	}
	var (
		req  imageEditRequest
		err  error
		name = "ImageEditRequest"
	)
	if kind == broker.KindOpenAIImageEdits {
		err = json.NewDecoder(bytes.NewReader(body)).Decode(&req)
	} else {
		var gen imageGenerationRequest
		err = json.NewDecoder(bytes.NewReader(body)).Decode(&gen)
		req.Model, req.Prompt, name = gen.Model, gen.Prompt, "ImageGenerationRequest"
	}
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &te) && te.Field != "":
		// A member of the wrong type: the middleware's decoder refuses the body, in its
		// words, before it looks at any member.
		te.Struct = name
		return badRequest(te.Error())
	case err != nil:
		return nil
	}
	switch {
	case req.Prompt == "":
		return badRequest("prompt is required")
	case req.Model == "":
		return badRequest("model is required")
	case kind != broker.KindOpenAIImageEdits:
		return nil
	case req.Image == "":
		return badRequest("image is required")
	}
	if err := ollama.CheckImageURL(req.Image); err != nil {
		return badRequest("invalid image: " + err.Error())
	}
	return nil
}

// imageGenerationRequest and imageEditRequest are the request types of Ollama's image
// middlewares (v0.17.4 openai.ImageGenerationRequest, openai.ImageEditRequest): a member
// of another type than theirs is their decoder's 400.
type imageGenerationRequest struct {
	Model          string `json:"model"`
	Prompt         string `json:"prompt"`
	N              int    `json:"n"`
	Size           string `json:"size"`
	ResponseFormat string `json:"response_format"`
	Seed           *int64 `json:"seed"`
}

type imageEditRequest struct {
	Model  string `json:"model"`
	Prompt string `json:"prompt"`
	Image  string `json:"image"`
	Size   string `json:"size"`
	Seed   *int64 `json:"seed"`
}

// refuseNoImages refuses an image route's call for a model whose capabilities say it
// makes no images: Ollama would run it as text and answer an empty 200 (ADR-0067). A
// model whose capabilities cannot be read is let through. The refusal is confirmed
// against the model list first (confirmCapabilities), as a refusal at submit is: a model
// created or pulled again since the last poll as an image generation model makes
// pictures at once; one the target cannot confirm now is let through too, as is a remote
// (cloud) model's call: Ollama sends it on to the remote host unchecked.
func (s *Server) refuseNoImages(ctx context.Context, kind broker.Kind, model string) error {
	if !kind.Image() {
		return nil
	}
	caps, remote, err := s.capabilitiesAndPlace(ctx, model)
	if err == nil && !remote && !slices.Contains(caps, "image") {
		var ok bool
		if caps, remote, ok = s.confirmCapabilities(ctx, model); ok && !remote && !slices.Contains(caps, "image") {
			return badRequest(fmt.Sprintf("model %q makes no images: it is not an image generation model (its capabilities: %v)", clipInput(model), caps))
		}
	}
	return ctx.Err()
}
