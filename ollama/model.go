package ollama

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/ollama/ollama/types/model"
)

// StreamRequested reports whether a /api/chat or /api/generate body asks for a
// streamed reply. Like Ollama, a missing or null "stream" means true.
func StreamRequested(body []byte) (bool, error) {
	var v struct {
		Stream *bool `json:"stream"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return false, fmt.Errorf("decode stream field: %w", err)
	}
	return v.Stream == nil || *v.Stream, nil
}

// Streams reports whether a call to route path streams its answer, given the body's
// "stream" member (nil when absent or null): the native /api/chat and /api/generate
// stream unless told not to, as Ollama does; the embedding routes never stream; every
// other route (/v1) answers in one piece unless told to stream.
func Streams(path string, stream *bool) bool {
	switch path {
	case "/api/chat", "/api/generate":
		return stream == nil || *stream
	case "/api/embed", "/api/embeddings", "/v1/embeddings", "/v1/images/generations", "/v1/images/edits":
		return false // the embedding and image routes answer whole, whatever "stream" says
	}
	return stream != nil && *stream
}

// StreamMember is a body's "stream" member as Ollama's request type of each route reads
// it (v0.17.4): the native chat and generate and the Responses types hold a *bool, which
// a null sets back to absent; the OpenAI chat and completions and the Anthropic types a
// bool, which a null leaves as it was, so "stream":true,"stream":null streams there.
type StreamMember struct {
	last *bool // the last value, nil when it was null
	kept *bool // the last value that was not null
}

// UnmarshalJSON reads one "stream" member; a body may hold several (the last counts).
func (s *StreamMember) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		s.last = nil
		return nil
	}
	var v bool
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	s.last, s.kept = &v, &v
	return nil
}

// For returns the member as route path's request type holds it, for Streams.
func (s StreamMember) For(path string) *bool {
	switch path {
	case "/v1/chat/completions", "/v1/completions", "/v1/messages":
		return s.kept
	}
	return s.last
}

// StreamsBody is Streams with the "stream" member read from body; a body it cannot read
// gets the route's default.
func StreamsBody(path string, body []byte) bool {
	var v struct {
		Stream StreamMember `json:"stream"`
	}
	if json.Unmarshal(body, &v) != nil {
		return Streams(path, nil)
	}
	return Streams(path, v.Stream.For(path))
}

// StreamedBody returns body, a JSON object, asking for a streamed answer: its "stream"
// members (every member whose name encoding/json would read as it: it ignores case)
// left out and "stream":true added last; withUsage does the same with
// "stream_options":{"include_usage":true}, which has an OpenAI-compatible stream end with
// the usage a non-streamed answer carries. The other members stay as they were, in
// their order: a decoder takes the last of the members it reads as one ("model" and
// "Model"), so their order is part of the request. A "stream_options" that Ollama's
// OpenAI layer cannot read (not an object, an "include_usage" that is no bool) is an
// error: the body is Ollama's to refuse (400), not one to answer by replacing it.
func StreamedBody(body []byte, withUsage bool) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("ollama: the body is not a JSON object")
	}
	out := make([]byte, 0, len(body)+16)
	out = append(out, '{')
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		name := t.(string) // a member's name, as the decoder has checked
		if strings.EqualFold(name, "stream") {
			continue
		}
		if withUsage && strings.EqualFold(name, "stream_options") {
			// Read as Ollama's openai.StreamOptions reads it.
			var opts *struct {
				IncludeUsage bool `json:"include_usage"`
			}
			if err := json.Unmarshal(v, &opts); err != nil {
				return nil, fmt.Errorf("ollama: stream_options: %w", err)
			}
			continue
		}
		key, err := json.Marshal(name)
		if err != nil {
			return nil, err
		}
		out = append(append(append(out, key...), ':'), v...)
		out = append(out, ',')
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("ollama: data after the body's JSON object")
	}
	if withUsage {
		out = append(out, `"stream_options":{"include_usage":true},`...)
	}
	return append(out, `"stream":true}`...), nil
}

// ModelOf returns the "model" field of a request body (falling back to the
// legacy "name" field that old /api/show and /api/delete clients send). It reads the
// body's first JSON value, as Ollama's router does; what follows it is not looked at.
func ModelOf(body []byte) (string, error) {
	var v struct {
		Model string `json:"model"`
		Name  string `json:"name"`
	}
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&v); err != nil {
		return "", fmt.Errorf("decode model field: %w", err)
	}
	if v.Model == "" {
		return v.Name, nil
	}
	return v.Model, nil
}

// NormalizeModel returns the canonical form of a model name, as Ollama resolves it
// (its types/model.ParseName): trimmed and lower-cased (Ollama compares names without
// case), the default host and namespace left out and the tag defaulted, so "Llama3",
// "llama3:latest", "library/llama3" and "registry.ollama.ai/library/llama3:latest" are
// the same model, "llama3:latest" as /api/tags lists it. A name Ollama would refuse
// (ValidModelName) keeps its old form: trimmed, lower-cased, ":latest" added to a last
// path element without a tag.
func NormalizeModel(name string) string {
	n := strings.ToLower(strings.TrimSpace(name))
	if n == "" {
		return ""
	}
	// Without a "/" there is no host or namespace to leave out, and the form below is
	// the parser's (for a name it takes) at an eighth of its cost: the common case, on
	// every request and for every model the inventory lists.
	if strings.Contains(n, "/") {
		if p := model.ParseName(n); p.IsValid() {
			return p.DisplayShortest()
		}
	}
	last := n
	if i := strings.LastIndexByte(n, '/'); i >= 0 {
		last = n[i+1:]
	}
	if !strings.Contains(last, ":") {
		n += ":latest"
	}
	return n
}

// ValidModelName reports whether Ollama takes name as a model name (its
// types/model.Name.IsValid: letters, digits and "_-." in parts of bounded length,
// "host/namespace/model:tag" with the host, namespace and tag optional). Ollama answers
// any other name with 400 "model is required".
func ValidModelName(name string) bool { return model.ParseName(name).IsValid() }

// FullModelName is name in full as Ollama's scheduler names a model in its refusals
// (v0.17.4 types/model.Name.String: host, namespace and tag filled in), e.g.
// "registry.ollama.ai/library/llama3:latest" for "llama3".
func FullModelName(name string) string { return model.ParseName(name).String() }

// ZeroKeepAlive reports whether raw, a request's keep_alive, is one Ollama reads as 0 (its
// api.Duration: a number of seconds, or a Go duration string): its scheduler unloads the
// model as soon as the request ends, and a generate with no prompt is its unload request.
// A negative value keeps the model loaded for good; a missing or null one is the server's
// OLLAMA_KEEP_ALIVE, which foreman cannot see; one Ollama cannot read makes it refuse the
// request.
func ZeroKeepAlive(raw json.RawMessage) bool {
	var v any
	if len(raw) == 0 || json.Unmarshal(raw, &v) != nil {
		return false
	}
	switch t := v.(type) {
	case float64:
		return t >= 0 && time.Duration(t*float64(time.Second)) == 0
	case string:
		d, err := time.ParseDuration(t)
		return err == nil && d == 0
	}
	return false
}
