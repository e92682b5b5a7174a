package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// refuseLacking refuses a POST /jobs (or foreman.jobs.submit) job that asks its model for
// a capability the model lacks (lacking: thinking, tools, insert), as its sync route
// sends such a call straight to Ollama, which refuses it before it schedules a runner:
// queued, the job waited its turn only to fail so. The 400 is in the words of Ollama's
// first refusal of that body (lackingRefusal); asked is the model as the body names it.
// The judgement starts from the capabilities the cache holds (an earlier look-up's, or
// cannotComplete's for this submit): a job they allow asks the target nothing more (the
// hot path). One they refuse is confirmed first (confirmCapabilities): the model may
// have been created or pulled again since the last poll of the model list, with a
// template that has what the cached answer lacks, and only capabilities read for the
// model the list names now refuse it. With none known, the target unreachable or not
// confirming, or a body whose first refusal foreman cannot tell, the job is queued as
// before. So is a remote model's (a cloud model's): Ollama's handlers send its call on
// to the remote host before any of these checks, and the remote answers it.
func (s *Server) refuseLacking(ctx context.Context, kind broker.Kind, model, asked string, asks capabilityAsks, body []byte) error {
	if !asks.thinks && !asks.tools && !asks.suffix || !s.inv.Reachable() {
		return nil
	}
	caps, remote, ok := s.cachedCapabilities(model)
	if !ok || remote || lacking(kind, asks, caps) == "" {
		return nil
	}
	caps, remote, ok = s.confirmCapabilities(ctx, model)
	if !ok || remote {
		return nil
	}
	what := lacking(kind, asks, caps)
	if what == "" {
		return nil
	}
	if msg := lackingRefusal(kind, what, caps, asked, s.fullModelName(model), body); msg != "" {
		return handlerRefusal(msg)
	}
	return nil
}

// refuseRawMode refuses a POST /jobs (or foreman.jobs.submit) generate job asking for raw
// mode with a template, system or context (asks.raw), as its sync route sends such a call
// straight to Ollama, whose generate handler refuses it before it schedules a runner,
// 400 rawModeRefusal: queued, the job was accepted (202) only to fail so in its turn.
// The rule is the sync route's (rawRefused): not for a remote model, an image model, an
// unload. It is judged as refuseLacking judges, on the capabilities the cache holds (the
// completion check's look-up for this submit, cannotComplete), and a refusal is
// confirmed against the target first (confirmCapabilities); capabilities unknown or not
// confirmed refuse nothing, and the job is queued as before.
func (s *Server) refuseRawMode(ctx context.Context, kind broker.Kind, model string, asks capabilityAsks) error {
	if !asks.raw || !s.inv.Reachable() {
		return nil
	}
	caps, remote, ok := s.cachedCapabilities(model)
	if !ok || !rawRefused(kind, asks, caps, remote) {
		return nil
	}
	if caps, remote, ok = s.confirmCapabilities(ctx, model); !ok || !rawRefused(kind, asks, caps, remote) {
		return nil
	}
	return handlerRefusal(rawModeRefusal)
}

// confirmWait bounds confirmCapabilities as a whole: the re-read of the model list and,
// when the model changed, its /api/show. It is requireModel's bound for its re-read.
const confirmWait = modelPollWait

// confirmCapabilities are model's capabilities as the target has them now, for a refusal
// that must not rest on an answer about a model since replaced under its name: the model
// list is read again by a poll begun after the call (one in flight may have read it
// before the model was created again: it is waited for, and the next one shared), and the model's
// /api/show read again only when its digest there is another than the cached answer's,
// or that answer is older than capsTTL (capabilities). A model the own list lacks (one
// only another Mac has) has no digest here to tell a change by: its /api/show is read
// again from that Mac (capsReread: beside the cache's answer, which serves the calls it
// allows meanwhile). Not ok when the target cannot be
// asked now (a check just got no answer, the re-read fails or takes longer than
// confirmWait, the /api/show fails) or no longer lists the model: the caller then
// refuses nothing, and Ollama answers the job in its turn.
func (s *Server) confirmCapabilities(ctx context.Context, model string) (caps []string, remote, ok bool) {
	if s.downStands() {
		return nil, false, false // the re-read would go unanswered too
	}
	deadline := time.Now().Add(confirmWait)
	if err := s.refreshOwnAfter(ctx, confirmWait); err != nil || !s.inv.Reachable() {
		return nil, false, false
	}
	cctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	// The answer is this look-up's own, not the map's after it: a look-up that came
	// later may have begun another there.
	lookUp := s.capsLookUp
	if !s.inv.HasModel(model) {
		lookUp = s.capsReread
	}
	e, err := lookUp(cctx, model)
	if err != nil || e.err != nil || e.digest != s.modelDigest(model) {
		return nil, false, false
	}
	return e.caps, e.remote, true
}

// lackingRefusal is Ollama's (v0.17.4) first refusal of body, a call of kind asking its
// model for what, which caps lack; full is the model in full as Ollama's scheduler names
// it. Its handlers check, in order: on generate raw mode with a template, system or
// context, then a think string (refused on a model without the harmony parser, which
// every model without thinking is); on /v1/chat/completions its layer a reasoning value
// first; then a think that enables thinking on a model without it (the body's name,
// quoted), then the scheduler's capabilities (completion, named by its handler, before
// tools or insert, named with the model in full). "" when foreman cannot tell: a member
// read here of a type Ollama's decoder refuses (its words come first), a think string
// on generate for a model that thinks (whether its parser is harmony /api/show does not
// say).
func lackingRefusal(kind broker.Kind, what string, caps []string, asked, full string, body []byte) string {
	req, ok := decodeLacking(kind, body)
	if !ok {
		return ""
	}
	for _, t := range req.Tools {
		if t := bytes.TrimSpace(t); t[0] != '{' && string(t) != "null" {
			return "" // api.Tool is a struct
		}
	}
	think, thinkString, ok := thinkValue(req.Think)
	if !ok {
		return ""
	}
	thinks := slices.Contains(caps, "thinking")
	switch kind {
	case broker.KindGenerate:
		if req.Raw && (req.Template != "" || req.System != "" || len(req.Context) > 0) {
			return rawModeRefusal
		}
		if thinkString && thinks {
			return ""
		}
		if thinkString {
			return fmt.Sprintf("think value %q is not supported for this model", think)
		}
	case broker.KindOpenAIChat:
		effort := ""
		if req.Reasoning != nil {
			effort = req.Reasoning.Effort
		} else if req.ReasoningEffort != nil {
			effort = *req.ReasoningEffort
		}
		if effort != "" && !slices.Contains([]string{"high", "medium", "low", "none"}, effort) {
			return fmt.Sprintf(`invalid reasoning value: '%s' (must be "high", "medium", "low", or "none")`, clipInput(effort))
		}
	}
	switch {
	case what == "thinking":
		return fmt.Sprintf("%q does not support thinking", asked)
	case !slices.Contains(caps, "completion"):
		return fmt.Sprintf("%q does not support %s", asked, completionHandler(kind))
	}
	return full + " does not support " + what
}

// lackingBody are the members lackingRefusal reads, as Ollama's request types hold them.
type lackingBody struct {
	Think           json.RawMessage
	Tools           []json.RawMessage
	Raw             bool
	Template        string
	System          string
	Context         []int
	Reasoning       *effortMember
	ReasoningEffort *string
}

// effortMember is /v1/chat/completions' "reasoning" (Ollama's openai.Reasoning).
type effortMember struct {
	Effort string `json:"effort"`
}

// decodeLacking decodes body as Ollama's request type of kind reads the members of
// lackingBody (each route's type has only some of them, and ignores the others); not ok
// when its decoder would refuse one of them.
func decodeLacking(kind broker.Kind, body []byte) (lackingBody, bool) {
	var out lackingBody
	switch kind {
	case broker.KindChat:
		var r struct {
			Think json.RawMessage   `json:"think"`
			Tools []json.RawMessage `json:"tools"`
		}
		if json.Unmarshal(body, &r) != nil {
			return out, false
		}
		out.Think, out.Tools = r.Think, r.Tools
	case broker.KindGenerate:
		var r struct {
			Think    json.RawMessage `json:"think"`
			Suffix   string          `json:"suffix"`
			Raw      bool            `json:"raw"`
			Template string          `json:"template"`
			System   string          `json:"system"`
			Context  []int           `json:"context"`
		}
		if json.Unmarshal(body, &r) != nil {
			return out, false
		}
		out.Think, out.Raw, out.Template, out.System, out.Context = r.Think, r.Raw, r.Template, r.System, r.Context
	case broker.KindOpenAIChat:
		var r struct {
			Tools           []json.RawMessage `json:"tools"`
			Reasoning       *effortMember     `json:"reasoning"`
			ReasoningEffort *string           `json:"reasoning_effort"`
		}
		if json.Unmarshal(body, &r) != nil {
			return out, false
		}
		out.Tools, out.Reasoning, out.ReasoningEffort = r.Tools, r.Reasoning, r.ReasoningEffort
	default:
		return out, false
	}
	return out, true
}

// thinkValue reads a native "think" member as Ollama's api.ThinkValue decodes it: absent,
// null, a boolean, or "high", "medium" or "low" (ok; think is the string, thinkString
// says it is one), anything else its decoder's 400 (not ok).
func thinkValue(raw json.RawMessage) (think string, thinkString, ok bool) {
	if len(raw) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return "", false, true
	}
	var b bool
	if json.Unmarshal(raw, &b) == nil {
		return "", false, true
	}
	var s string
	if json.Unmarshal(raw, &s) == nil && slices.Contains([]string{"high", "medium", "low"}, s) {
		return s, true, true
	}
	return "", false, false
}

// fullModelName is model in full as Ollama's scheduler names it, spelt as
// Ollama's model list spells it (Ollama takes a stored name's case), else as named.
func (s *Server) fullModelName(model string) string {
	name := model
	if tags := s.inv.Snapshot().Tags; tags != nil {
		want := ollama.NormalizeModel(model)
		for _, m := range tags.Models {
			if ollama.NormalizeModel(m.Name) == want {
				name = m.Name
				break
			}
		}
	}
	return ollama.FullModelName(name)
}
