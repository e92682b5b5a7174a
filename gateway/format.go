package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// refuseBadFormat answers a native chat or generate call whose "format" Ollama can only
// refuse (neither "json" nor a JSON object: `"JSON"`, `"yaml"`, `5`) with Ollama's own
// words, as a 400, before a job is made; and so an OpenAI chat whose response_format,
// or an OpenAI response whose text.format, Ollama's OpenAI layer turns into such a format
// (openAIChatFormat, openAIResponsesFormat). Ollama checks it only when it runs the
// completion, after it has loaded the model: the call answered 500 after its turn in the
// queue, and the doomed job made the Mac swap models. Its rules are followed (v0.17.4
// llm/server.go Completion): null and "" mean no format; a call that only loads the model
// (no messages, an empty prompt) never reaches the check; a thinking model's chat runs
// its first completion without the format, and an image generation model's generate has
// none, so those are left to Ollama, as is a model whose capabilities cannot be read,
// and a remote (cloud) model's call: Ollama sends it on to the remote host unchecked, and
// the remote answers it (as refuseLacking leaves it).
// A refusal is confirmed against the model list first (confirmCapabilities), as one at
// submit is: the model may have been created again since the last poll as one that thinks.
func (s *Server) refuseBadFormat(ctx context.Context, kind broker.Kind, model string, in inference) error {
	chat := kind == broker.KindChat || kind == broker.KindOpenAIChat || kind == broker.KindOpenAIResponses // Ollama's chat handler runs them all
	if !chat && kind != broker.KindGenerate || formatTaken(in.format) || !in.completes {
		return nil // another route, a format Ollama takes, or a load: no completion
	}
	caps, remote, err := s.capabilitiesAndPlace(ctx, model)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return nil
	}
	takes := func(caps []string) bool {
		return (chat && slices.Contains(caps, "thinking")) || (kind == broker.KindGenerate && slices.Contains(caps, "image"))
	}
	if remote || takes(caps) {
		return nil
	}
	// Confirmed against the model the list names now before it refuses (ADR-0129): a
	// model created again since the last poll as a thinking one runs the call.
	if caps, remote, ok := s.confirmCapabilities(ctx, model); !ok || remote || takes(caps) {
		return ctx.Err()
	}
	return badRequest(fmt.Sprintf("invalid format: %q; expected \"json\" or a valid JSON Schema object", clipInput(string(in.format))))
}

// openAIChatFormat is the format Ollama's OpenAI layer makes of a /v1/chat/completions
// "response_format" (v0.17.4 openai.FromChatRequest): "json" for the type json_object,
// the json_schema's "schema" as it came for json_schema (a schema that is no object,
// `"yaml"` or `[]`, became Ollama's 500 after the model load), none otherwise. A value
// Ollama's layer cannot decode is left to it (its own 400): none here.
func openAIChatFormat(raw json.RawMessage) json.RawMessage {
	var rf struct {
		Type       trimmedWord `json:"type"`
		JSONSchema *struct {
			Schema json.RawMessage `json:"schema"`
		} `json:"json_schema"`
	}
	if len(raw) == 0 || json.Unmarshal(raw, &rf) != nil {
		return nil
	}
	switch strings.ToLower(strings.TrimSpace(string(rf.Type))) {
	case "json_object":
		return json.RawMessage(`"json"`)
	case "json_schema":
		if rf.JSONSchema != nil {
			return rf.JSONSchema.Schema
		}
	}
	return nil
}

// openAIResponsesFormat is the format Ollama's OpenAI layer makes of a /v1/responses
// "text" (v0.17.4 openai.FromResponsesRequest): its format's "schema" as it came when
// the format's type is exactly "json_schema", none otherwise, as for a value the layer
// cannot decode (its own 400).
func openAIResponsesFormat(raw json.RawMessage) json.RawMessage {
	var text struct {
		Format *struct {
			Type   shortWord       `json:"type"`
			Schema json.RawMessage `json:"schema"`
		} `json:"format"`
	}
	if len(raw) == 0 || json.Unmarshal(raw, &text) != nil || text.Format == nil || text.Format.Type != "json_schema" {
		return nil
	}
	return text.Format.Schema
}

// nonEmpty decodes a "messages" or "prompt" member only as far as Ollama's load check
// reads it (len(req.Messages) == 0, req.Prompt == ""): whether it holds a message or a
// character, without copying it (a prompt or messages may be megabytes).
type nonEmpty bool

func (n *nonEmpty) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case len(b) == 0 || string(b) == "null" || string(b) == `""`:
		*n = false
	case b[0] == '[':
		*n = len(bytes.TrimSpace(b[1:len(b)-1])) > 0
	default:
		*n = true
	}
	return nil
}

// listMember decodes a list member of an OpenAI-compatible body as far as Ollama's OpenAI
// layer checks it before its handler runs ("messages" on /v1/chat/completions, "input"
// on /v1/embeddings): it holds none (none) when absent or null, as Ollama's slice or any
// is nil then, or an empty list. Anything else (a string, an object) is left to Ollama,
// whose decoder or handler answers it; on the routes whose Ollama field is a list,
// refused, the kind of the first value that is no list, is its decoder's 400
// (nativeTypeRefusal, compatTypeRefusal), kept past a null after it as the decoder keeps
// its first error: the "messages" field is no pointer, so the decoder hands it the null.
// items is what nonEmpty reads of the last value, present whether that was not null.
type listMember struct {
	items, empty, present bool
	refused               string
}

func (m *listMember) UnmarshalJSON(b []byte) error {
	var n nonEmpty
	_ = n.UnmarshalJSON(b)
	b = bytes.TrimSpace(b)
	k := jsonKind(b)
	m.items, m.empty, m.present = bool(n), len(b) > 0 && b[0] == '[' && !bool(n), k != "null"
	if m.refused == "" && k != "array" && k != "null" {
		m.refused = k
	}
	return nil
}

// holds reports whether m holds something (nonEmpty).
func (m *listMember) holds() bool { return m != nil && m.present && m.items }

// none reports whether m is absent, null or an empty list: what Ollama's OpenAI layer
// refuses as no messages or no input.
func (m *listMember) none() bool { return m == nil || !m.present || m.empty }

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
