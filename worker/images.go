package worker

import (
	"errors"
	"fmt"
	"net/http"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// noImage is err, the answer check's verdict on an answer of kind, unless the job asks
// an OpenAI image route for a picture and the answer is empty: that is how Ollama
// (v0.17.4) answers such a call with a model that makes no images (its generate runs the
// model as text, and the route's writer drops every line it writes but one with an
// image: a 200 with no body). The caller named the wrong model, so the job fails as
// Ollama's own 400 would, saying why, rather than as the target's bad answer.
func noImage(kind broker.Kind, model string, err error) error {
	var bad *badAnswerError
	if kind != broker.KindOpenAIImages && kind != broker.KindOpenAIImageEdits || !errors.As(err, &bad) || len(bad.start) > 0 {
		return err
	}
	return &ollama.HTTPError{StatusCode: http.StatusBadRequest,
		Message: fmt.Sprintf("model %q made no image: it is not an image generation model", model)}
}
