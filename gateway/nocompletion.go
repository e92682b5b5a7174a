package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// completionHandler is the Ollama handler (v0.17.4 server/routes.go) that runs a job of
// kind, as its "does not support ..." refusal names it: "chat" for the chat handler
// (native, /v1/chat/completions, /v1/responses, /v1/messages), "generate" for the
// generate handler (native, /v1/completions); "" for the other kinds.
func completionHandler(kind broker.Kind) string {
	switch kind {
	case broker.KindChat, broker.KindOpenAIChat, broker.KindOpenAIResponses, broker.KindAnthropicMessages:
		return "chat"
	case broker.KindGenerate, broker.KindOpenAICompletion:
		return "generate"
	}
	return ""
}

// cannotComplete reports whether a chat or generate call of kind for model is one that
// Ollama's handler refuses before it schedules a runner, so that no model is loaded: the
// model's capabilities lack "completion" (an embedding model), and, on the generate
// handler, "image" (an image generation model's generate is run apart). Such a call
// queued waited its turn behind the running job (minutes on a busy Mac) to be refused
// in a few milliseconds. A model whose capabilities cannot be read is queued as before.
func (s *Server) cannotComplete(ctx context.Context, kind broker.Kind, model string) bool {
	handler := completionHandler(kind)
	if handler == "" || !s.inv.Reachable() {
		// While the own Ollama does not answer, the call is queued to wait for it as
		// before (ADR-0046), not held by a look-up that cannot be answered.
		return false
	}
	caps, err := s.capabilities(ctx, model)
	if err != nil || slices.Contains(caps, "completion") {
		return false
	}
	return handler == "chat" || !slices.Contains(caps, "image")
}

// relayNoCompletion sends a sync call that cannot complete (cannotComplete) straight to
// the target that has model, as an embedding call on an embedding model goes (ADR-0013):
// Ollama refuses it in its handler, in its words and order, whatever else is wrong
// with the body, and the caller gets that answer as Ollama gives it, with no job. Nothing
// is loaded: the refusal comes before the handler schedules a runner (a load-only call
// with keep_alive 0 unloads the model named, which runs no job of the worker's). body is
// what Ollama reads of the request (decoded from zstd, cut after its first JSON value),
// so the request's Content-Encoding is not sent with it.
func (s *Server) relayNoCompletion(w http.ResponseWriter, r *http.Request, kind broker.Kind, model string, body []byte, hold *bodyHold) {
	out := r.Clone(r.Context())
	out.Header.Del("Content-Encoding")
	s.relayModel(w, out, http.MethodPost, model, targetPath(kind.Path(), r.URL.RawQuery), body, hold.release)
}

// refuseNoCompletion refuses a POST /jobs (or foreman.jobs.submit) job that cannot
// complete (cannotComplete) at submit, with the words of its handler's refusal
// (`"name" does not support chat`): queued, it was accepted only to fail in its turn,
// where a batch is told at submit of a model Ollama does not have. asked is the model as
// the body names it, as Ollama quotes it. A body whose first refusal on Ollama could be
// another one, which Ollama gives before it checks the model's capabilities, is queued
// as before, for Ollama to answer in its turn: a think or reasoning value (a model
// without thinking is refused so first, but on /v1/messages, where it is relaxed), a
// generate's raw (raw mode's own refusal), a keep_alive (with nothing to complete, an
// unload, which Ollama answers 200).
func (s *Server) refuseNoCompletion(ctx context.Context, kind broker.Kind, model, asked string, body []byte) error {
	if !s.cannotComplete(ctx, kind, model) {
		return nil
	}
	var m struct {
		Think           json.RawMessage `json:"think"`
		Reasoning       json.RawMessage `json:"reasoning"`
		ReasoningEffort json.RawMessage `json:"reasoning_effort"`
		Raw             json.RawMessage `json:"raw"`
		KeepAlive       json.RawMessage `json:"keep_alive"`
	}
	if json.Unmarshal(body, &m) != nil {
		return nil // the target's decoder answers it
	}
	set := func(v json.RawMessage) bool { return len(v) > 0 && string(v) != "null" && string(v) != "false" }
	thinks := kind != broker.KindAnthropicMessages && (set(m.Think) || set(m.Reasoning) || set(m.ReasoningEffort))
	if thinks || set(m.Raw) || set(m.KeepAlive) {
		return nil
	}
	return handlerRefusal(fmt.Sprintf("%q does not support %s", asked, completionHandler(kind)))
}
