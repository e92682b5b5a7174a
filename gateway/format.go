package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// refuseBadFormat answers a native chat or generate call whose "format" Ollama can only
// refuse (neither "json" nor a JSON object: `"JSON"`, `"yaml"`, `5`) with Ollama's own
// words, as a 400, before a job is made. Ollama checks it only when it runs the
// completion, after it has loaded the model: the call answered 500 after its turn in the
// queue, and the doomed job made the Mac swap models. Its rules are followed (v0.17.4
// llm/server.go Completion): null and "" mean no format; a call that only loads the model
// (no messages, an empty prompt) never reaches the check; a thinking model's chat runs
// its first completion without the format, and an image generation model's generate has
// none, so those are left to Ollama, as is a model whose capabilities cannot be read.
func (s *Server) refuseBadFormat(ctx context.Context, kind broker.Kind, model string, body []byte) error {
	if kind != broker.KindChat && kind != broker.KindGenerate {
		return nil
	}
	var req struct {
		Format   json.RawMessage   `json:"format"`
		Prompt   string            `json:"prompt"`
		Messages []json.RawMessage `json:"messages"`
	}
	if json.Unmarshal(body, &req) != nil {
		return nil // left to the target, whose decode refuses it
	}
	if formatTaken(req.Format) {
		return nil
	}
	if (kind == broker.KindChat && len(req.Messages) == 0) || (kind == broker.KindGenerate && req.Prompt == "") {
		return nil // a load: Ollama answers it without a completion
	}
	caps, err := s.capabilities(ctx, model)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return nil
	}
	if (kind == broker.KindChat && slices.Contains(caps, "thinking")) || (kind == broker.KindGenerate && slices.Contains(caps, "image")) {
		return nil
	}
	return badRequest(fmt.Sprintf("invalid format: %q; expected \"json\" or a valid JSON Schema object", clipInput(string(req.Format))))
}

// formatTaken reports whether Ollama's completion takes a "format" value as it came:
// none, null, "", "json", or a JSON object (a schema; whether llama.cpp can turn it into
// a grammar is Ollama's to say).
func formatTaken(f json.RawMessage) bool {
	switch string(f) {
	case "", "null", `""`, `"json"`:
		return true
	}
	return f[0] == '{'
}
