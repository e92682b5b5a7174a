package gateway

import (
	"bytes"
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
	caps, err := s.knownCapabilities(ctx, model)
	return err == nil && completesNot(kind, caps)
}

// completesNot reports whether caps, a model's capabilities, are those of a model whose
// call of kind Ollama's handler refuses before it schedules a runner (cannotComplete).
func completesNot(kind broker.Kind, caps []string) bool {
	if slices.Contains(caps, "completion") {
		return false
	}
	return completionHandler(kind) == "chat" || !slices.Contains(caps, "image")
}

// capabilityAsks is what a chat or generate call asks of its model's capabilities beyond
// completing, as Ollama's handler reads its body (parseInference).
type capabilityAsks struct {
	thinks bool // a think value that enables thinking (on /v1/chat/completions a reasoning effort)
	tools  bool // a "tools" that holds something
	suffix bool // a "suffix" that holds something
	unload bool // nothing to complete and a keep_alive: maybe an unload, which Ollama answers 200
	// raw is a native generate body that asks for raw mode with a template, system or
	// context, as Ollama's decoder reads them (rawConflict): its handler refuses it
	// (rawModeRefusal) before it schedules a runner.
	raw bool
}

// rawModeRefusal is the words of Ollama's generate handler (v0.17.4) for raw mode with a
// template, system or context.
const rawModeRefusal = "raw mode does not support template, system, or context"

// rawConflict reports whether body, a native generate body that decoded, asks for raw
// mode with a non-empty template, system or context as Ollama's decoder reads them into
// its api.GenerateRequest (member names matched as encoding/json matches them, the last
// of a name winning). A body whose decode of these members fails is Ollama's decoder's
// 400 first, not raw mode's: false, left to the type checks and to Ollama.
func rawConflict(body []byte) bool {
	var r struct {
		Raw      bool   `json:"raw"`
		Template string `json:"template"`
		System   string `json:"system"`
		Context  []int  `json:"context"`
	}
	return json.Unmarshal(body, &r) == nil && r.Raw && (r.Template != "" || r.System != "" || len(r.Context) > 0)
}

// rawRefused reports whether Ollama's generate handler refuses a call of kind asking
// asks with raw mode's refusal (rawModeRefusal) before it schedules a runner, for a model
// with caps, remote when /api/show names a remote host: the handler checks raw mode after
// it sent a remote model's call on to its host, unloaded for an unload and ran an image
// model's generate apart, and before anything the model can do or not (thinking, insert,
// completion itself). An unload is read as Ollama reads it, no prompt and a keep_alive
// of 0 (asks.raw is false for one, parseInference): a body with no prompt and another
// keep_alive (a load that keeps the model so long) is refused, as Ollama refuses it.
func rawRefused(kind broker.Kind, asks capabilityAsks, caps []string, remote bool) bool {
	return kind == broker.KindGenerate && asks.raw && !remote && !slices.Contains(caps, "image")
}

// thinkThinks reports whether a native "think" enables thinking as Ollama reads it
// (v0.17.4 api.ThinkValue: true, "high", "medium", "low"; false, null and absent do not,
// and any other value is its decoder's 400). A string is read as the decoder reads it,
// escapes and all ("\u0068igh" is "high"); one longer than any spelling of those three
// (38 bytes, every character escaped) is none of them.
func thinkThinks(v json.RawMessage) bool {
	v = bytes.TrimSpace(v)
	switch {
	case string(v) == "true":
		return true
	case len(v) == 0 || v[0] != '"' || len(v) > 38:
		return false
	}
	s, ok := jsonString(v)
	return ok && slices.Contains([]string{"high", "medium", "low"}, s)
}

// reasoningThinks reports whether a /v1/chat/completions body enables thinking as
// Ollama's OpenAI layer reads it (v0.17.4 openai.FromChatRequest): the effort of
// "reasoning", else "reasoning_effort", one of "high", "medium", "low". Values of other
// types are the layer's 400.
func reasoningThinks(reasoning, effort json.RawMessage) bool {
	var e shortWord // a long one is not decoded: it is none of the three
	if len(reasoning) > 0 && string(reasoning) != "null" {
		var r struct {
			Effort shortWord `json:"effort"`
		}
		if json.Unmarshal(reasoning, &r) != nil {
			return false
		}
		e = r.Effort
	} else if json.Unmarshal(effort, &e) != nil {
		return false
	}
	return slices.Contains([]shortWord{"high", "medium", "low"}, e)
}

// refusedWithoutLoad reports whether a sync call of kind for model is one Ollama's
// handler refuses before it schedules a runner, so that it loads nothing and answers at
// once: the model cannot complete (completesNot), or, on the native chat and generate
// routes and /v1/chat/completions, whose bodies Ollama reads as they come, the call asks
// for a capability the model's /api/show does not list: thinking (asks.thinks, read as
// Ollama reads it), tools (chat), insert (a suffix, generate). Every check Ollama's
// handler makes before it schedules a runner is a refusal but for an unload (nothing to
// complete and a keep_alive) and an image model's generate, which are queued as before.
// Such a call queued waited its turn behind the running job to be refused in a few
// milliseconds; it goes straight to Ollama (relayNoCompletion), whose words and order it
// gets. A value read otherwise than Ollama reads it could only queue a call that need
// not be: each reading is Ollama's or narrower.
//
// The judgement starts from the capabilities the cache holds (knownCapabilities): a call
// they let complete asks the target nothing more (the hot path). One they would send
// straight is confirmed first (confirmCapabilities), as a refusal at submit is: the
// model may have been created or pulled again since the last poll of the model list as
// one that completes, or has what the call asks for, and Ollama would run such a call
// sent straight, beside the worker's job. Only capabilities read for the model the list
// names now send it; with none confirmed (the target cannot be asked now) it is queued,
// and Ollama answers it in its turn.
func (s *Server) refusedWithoutLoad(ctx context.Context, kind broker.Kind, model string, asks capabilityAsks) bool {
	if completionHandler(kind) == "" || !s.inv.Reachable() {
		// While the own Ollama does not answer, the call is queued to wait for it as
		// before (ADR-0046), not held by a look-up that cannot be answered.
		return false
	}
	caps, err := s.knownCapabilities(ctx, model)
	if err != nil {
		return false
	}
	remote := false
	if asks.raw {
		_, remote, _ = s.cachedCapabilities(model)
	}
	if !refusesWithoutLoad(kind, asks, caps, remote) {
		return false
	}
	caps, remote, ok := s.confirmCapabilities(ctx, model)
	return ok && refusesWithoutLoad(kind, asks, caps, remote)
}

// refusesWithoutLoad is refusedWithoutLoad's rule on caps, the model's capabilities, for
// a call of kind (one with a completion handler) asking asks; remote says /api/show
// names a remote host (read for raw mode's refusal alone, which Ollama's handler makes
// only after it sent a remote model's call on).
func refusesWithoutLoad(kind broker.Kind, asks capabilityAsks, caps []string, remote bool) bool {
	return completesNot(kind, caps) || lacking(kind, asks, caps) != "" || rawRefused(kind, asks, caps, remote)
}

// lacking is the capability a call of kind asks of its model that caps, the model's
// capabilities, do not list, "" for none: the rule of refusedWithoutLoad, which sends
// such a sync call straight to Ollama, and of refuseLacking, which refuses such a job at
// submit. Only the routes whose body Ollama's handler reads as it comes (native chat and
// generate, /v1/chat/completions) are read; an unload and an image model's generate
// refuse nothing.
func lacking(kind broker.Kind, asks capabilityAsks, caps []string) string {
	if kind != broker.KindChat && kind != broker.KindGenerate && kind != broker.KindOpenAIChat ||
		asks.unload || kind == broker.KindGenerate && slices.Contains(caps, "image") {
		return ""
	}
	lacks := func(c string) bool { return !slices.Contains(caps, c) }
	switch {
	case asks.thinks && lacks("thinking"):
		return "thinking"
	case kind != broker.KindGenerate && asks.tools && lacks("tools"):
		return "tools"
	case kind == broker.KindGenerate && asks.suffix && lacks("insert"):
		return "insert"
	}
	return ""
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
// another one, which Ollama gives before it checks the model's capabilities, is not
// refused here: it is left to refuseRawMode (raw mode with a template, system or
// context) and refuseLacking (a job asking for a capability its model lacks), else
// queued as before, for Ollama to answer in its turn: a think or reasoning value (a model without
// thinking is refused so first, but on /v1/messages, where it is relaxed), a generate's
// raw mode with a template, system or context (raw mode's own refusal; raw mode alone
// passes that check, and the capability's refusal follows), a keep_alive (with nothing to complete, an unload, which
// Ollama answers 200). Like refuseLacking, it refuses only on capabilities confirmed
// against the target (confirmCapabilities); a target that cannot confirm them refuses
// nothing.
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
	if thinks || kind == broker.KindGenerate && set(m.Raw) && rawConflict(body) || set(m.KeepAlive) {
		return nil // raw mode with a template, system or context: refuseRawMode's
	}
	// Judged on the cached answer: confirmed against the model the list names now before
	// it refuses (the model may have been created again since the last poll as one that
	// completes), as refuseLacking confirms its refusals.
	if caps, _, ok := s.confirmCapabilities(ctx, model); !ok || !completesNot(kind, caps) {
		return nil
	}
	return handlerRefusal(fmt.Sprintf("%q does not support %s", asked, completionHandler(kind)))
}
