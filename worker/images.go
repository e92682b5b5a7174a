package worker

import (
	"errors"
	"fmt"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// noImage is err, the answer check's verdict on an answer of kind, but for an empty
// answer to an image route, which says what it means: Ollama (v0.17.4) sends its headers
// with the generation's first step and drops every line but the one with the picture,
// so a generation that fails after its first step, or a model that makes no images (its
// generate then runs it as text), ends in a 200 with no body. The gateway refuses the
// second when it can tell (ADR-0067); what is left is the target's failure.
func noImage(kind broker.Kind, model string, err error) error {
	var bad *badAnswerError
	if !kind.Image() || !errors.As(err, &bad) || len(bad.start) > 0 {
		return err
	}
	return &noImageError{model: model}
}

// noImageError is an empty answer to an image route: failed as a bad answer is, at once.
type noImageError struct{ model string }

func (e *noImageError) Error() string {
	return fmt.Sprintf("the target answered no image for model %q (an empty answer: its image generation failed, or the model makes no images)", e.model)
}
