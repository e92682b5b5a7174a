package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// The members of a body on the OpenAI-compatible and Anthropic routes are checked as
// Ollama's layers there check them (ADR-0142): each layer's middleware decodes the body
// into a request type of its own (v0.17.4 openai.ChatCompletionRequest,
// openai.CompletionRequest, openai.ResponsesRequest, openai.EmbedRequest,
// anthropic.MessagesRequest) before it looks at anything else, and answers a value the
// decoder refuses 400, in the layer's error shape, with the decoder's text. As on the
// native routes (ADR-0141), only the JSON kind of each value is read (a number's
// literal, for the int and float fields): never a message, an input or an image.

// objectKind is a struct or *struct field's rule.
type objectKind struct{}

func (objectKind) takes(k string) bool { return k == "object" }

// kinded is a member whose field in Ollama's request type takes the JSON kinds of R, and
// that nothing else reads: refused is the kind of the first value it cannot take.
type kinded[R kindRule] struct{ refused string }

func (m *kinded[R]) UnmarshalJSON(b []byte) error {
	var rule R
	if k := jsonKind(b); m.refused == "" && k != "null" && !rule.takes(k) {
		m.refused = k
	}
	return nil
}

// rawKinded is a kinded member whose last value is kept as sent (raw) for a check that
// reads it.
type rawKinded[R kindRule] struct {
	raw  json.RawMessage
	kind kinded[R]
}

func (m *rawKinded[R]) UnmarshalJSON(b []byte) error {
	m.raw = append(m.raw[:0], b...)
	return m.kind.UnmarshalJSON(b)
}

// int64Member is an int or int64 member read no further than its refusal (intRefused).
type int64Member struct{ refused string }

func (m *int64Member) UnmarshalJSON(b []byte) error {
	if m.refused == "" {
		m.refused = intRefused(b, 64)
	}
	return nil
}

// floatMember is a float member: the first value a float32 field refuses and the first
// a float64 field refuses (a number past the type's range is refused too, as
// encoding/json refuses it: "number 1e39"). Some routes' types hold float32s, others
// float64s, under the same name.
type floatMember struct{ refused32, refused64 string }

func (m *floatMember) UnmarshalJSON(b []byte) error {
	if m.refused32 != "" && m.refused64 != "" {
		return nil
	}
	r32, r64 := floatRefused(b)
	if m.refused32 == "" {
		m.refused32 = r32
	}
	if m.refused64 == "" {
		m.refused64 = r64
	}
	return nil
}

// floatRefused is the value encoding/json names when it refuses b for a float32 and for
// a float64 field, "" when the field takes it. A number is parsed as a float32 too only
// when it is no less than float32's largest as a float64: one less rounds to a float32.
// A number it quotes is clipped (numberWords).
func floatRefused(b []byte) (r32, r64 string) {
	switch k := jsonKind(b); k {
	case "null":
		return "", ""
	case "number":
		lit := shortFloatLiteral(bytes.TrimSpace(b))
		f, err := strconv.ParseFloat(lit, 64)
		if err != nil {
			return numberWords(b), numberWords(b)
		}
		if math.Abs(f) >= math.MaxFloat32 {
			if _, err := strconv.ParseFloat(lit, 32); err != nil {
				return numberWords(b), ""
			}
		}
		return "", ""
	default:
		return k, k
	}
}

// maxFloatLiteral is the longest number literal floatRefused parses as it came. A
// longer one is parsed as shortFloatLiteral writes it: copied and parsed whole, and
// copied again into strconv's error, a literal of a body's size cost several bodies.
const maxFloatLiteral = 1024

// floatDigits is how many significant digits strconv.ParseFloat keeps of a long
// literal (its decimal's); past them it notes only whether one is not 0, which is
// enough to round any float64 or float32 as the whole literal rounds.
const floatDigits = 800

// shortFloatLiteral is lit, a JSON number, when it is at most maxFloatLiteral bytes long;
// else one of at most floatDigits+1 digits that strconv.ParseFloat refuses (a number past
// the type's range) where it refuses lit, for a float64 and a float32: "0.", lit's first
// floatDigits significant digits, a 1 when a digit after them is not 0, and the exponent
// that puts the point where strconv's decimal reading of lit puts it. That reading is
// what strconv (so Ollama's decoder) falls back on for any literal out of range, and it
// counts no more than floatDigits digits before the point, nor an exponent past 10000:
// it reads "1" + 900 zeros + "e-900" as 1e-101. Such a literal is read as strconv reads
// it, a number in range being taken, whatever its value; any other is read to the bit.
func shortFloatLiteral(lit []byte) string {
	if len(lit) <= maxFloatLiteral {
		return string(lit)
	}
	out := make([]byte, 0, floatDigits+32)
	i := 0
	if lit[0] == '-' {
		out = append(out, '-')
		i++
	}
	out = append(out, '0', '.')
	var (
		dp, nd     int // the point's place after the first significant digit, digits kept
		dot, trunc bool
	)
digits:
	for ; i < len(lit); i++ {
		switch c := lit[i]; {
		case c == '.':
			dot, dp = true, nd
		case c < '0' || c > '9':
			break digits
		case c == '0' && nd == 0: // a zero before the first significant digit
			dp--
		case nd < floatDigits:
			out = append(out, c)
			nd++
		case c != '0':
			trunc = true
		}
	}
	if nd == 0 {
		return "0"
	}
	if !dot {
		dp = nd
	}
	if trunc {
		out = append(out, '1')
	}
	if i < len(lit) && (lit[i] == 'e' || lit[i] == 'E') {
		i++
		sign := 1
		if i < len(lit) && (lit[i] == '-' || lit[i] == '+') {
			if lit[i] == '-' {
				sign = -1
			}
			i++
		}
		e := 0
		for ; i < len(lit) && lit[i] >= '0' && lit[i] <= '9'; i++ {
			if e < 10000 { // as strconv reads it: far past any float's range
				e = e*10 + int(lit[i]-'0')
			}
		}
		dp += sign * e
	}
	return string(strconv.AppendInt(append(out, 'e'), int64(dp), 10))
}

// stringMember is a string member kept by value (the model, as modelString reads it): a
// null leaves the value before it, as the decoder leaves a string field; refused is the
// kind of the first value that is no string.
type stringMember struct {
	s       string
	refused string
}

func (m *stringMember) UnmarshalJSON(b []byte) error {
	switch k := jsonKind(b); k {
	case "null":
	case "string":
		if s, ok := modelString(b); ok {
			m.s = s
		}
	default:
		if m.refused == "" {
			m.refused = k
		}
	}
	return nil
}

// inputMember is an "input": what nonEmpty reads of it (holds), and the kind of the
// first value that is neither a string nor a list (refused), which /v1/responses'
// openai.ResponsesInput refuses.
type inputMember struct {
	holds   nonEmpty
	refused string
}

func (m *inputMember) UnmarshalJSON(b []byte) error {
	if k := jsonKind(b); m.refused == "" && k != "null" && k != "string" && k != "array" {
		m.refused = k
	}
	return m.holds.UnmarshalJSON(b)
}

// compatRequestTypes name the request types of Ollama's OpenAI and Anthropic layers
// (v0.17.4), as their decoders' refusals name them.
var compatRequestTypes = map[broker.Kind]string{
	broker.KindOpenAIChat: "ChatCompletionRequest", broker.KindOpenAICompletion: "CompletionRequest",
	broker.KindOpenAIResponses: "ResponsesRequest", broker.KindAnthropicMessages: "MessagesRequest",
	broker.KindOpenAIEmbeddings: "EmbedRequest",
}

// compatTypeRefusal is the 400 of the decoder of Ollama's OpenAI or Anthropic layer for
// a body of kind (req, as parseInference decoded it) with a member of a kind its field
// cannot take, in the decoder's words; nil for none or another kind. An /v1/responses
// input that is neither a string nor a list is refused by its own decoder, which ends
// the decode, so it comes first; of the others the decoder names the first in the body,
// which is not known here: the first in the request type's order is named, a true 400
// all the same.
func compatTypeRefusal(kind broker.Kind, req *inferenceRequest) error {
	var members []memberType
	switch kind {
	case broker.KindOpenAIChat:
		members = []memberType{
			{"model", "string", req.Model.refused},
			{"messages", "[]openai.Message", req.Messages.refused},
			{"stream", "bool", req.Stream.refused()},
			{"stream_options", "openai.StreamOptions", req.StreamOptions.refused},
			{"max_tokens", "int", req.MaxTokens.refused},
			{"seed", "int", req.Seed.refused},
			{"temperature", "float64", req.Temperature.refused64},
			{"frequency_penalty", "float64", req.FrequencyPenalty.refused64},
			{"presence_penalty", "float64", req.PresencePenalty.refused64},
			{"top_p", "float64", req.TopP.refused64},
			{"response_format", "openai.ResponseFormat", req.ResponseFormat.kind.refused},
			{"tools", "[]api.Tool", req.Tools.refused},
			{"reasoning", "openai.Reasoning", req.Reasoning.kind.refused},
			{"reasoning_effort", "string", req.ReasoningEffort.kind.refused},
			{"logprobs", "bool", req.Logprobs.asBool.refused},
			{"top_logprobs", "int", req.TopLogprobs.refused},
			{"_debug_render_only", "bool", req.DebugRenderOnly.refused},
		}
	case broker.KindOpenAICompletion:
		members = []memberType{
			{"model", "string", req.Model.refused},
			{"prompt", "string", req.Prompt.refused},
			{"frequency_penalty", "float32", req.FrequencyPenalty.refused32},
			{"max_tokens", "int", req.MaxTokens.refused},
			{"presence_penalty", "float32", req.PresencePenalty.refused32},
			{"seed", "int", req.Seed.refused},
			{"stream", "bool", req.Stream.refused()},
			{"stream_options", "openai.StreamOptions", req.StreamOptions.refused},
			{"temperature", "float32", req.Temperature.refused32},
			{"top_p", "float32", req.TopP.refused32},
			{"suffix", "string", req.Suffix.refused},
			{"logprobs", "int", req.Logprobs.asInt.refused},
			{"_debug_render_only", "bool", req.DebugRenderOnly.refused},
		}
	case broker.KindOpenAIResponses:
		if k := req.Input.refused; k != "" {
			return badRequest("input must be a string or array: json: cannot unmarshal " + k + " into Go value of type []json.RawMessage")
		}
		members = []memberType{
			{"model", "string", req.Model.refused},
			{"background", "bool", req.Background.refused},
			{"include", "[]string", req.Include.refused},
			{"instructions", "string", req.Instructions.refused},
			{"max_output_tokens", "int", req.MaxOutputTokens.refused},
			{"reasoning", "openai.ResponsesReasoning", req.Reasoning.kind.refused},
			{"temperature", "float64", req.Temperature.refused64},
			{"text", "openai.ResponsesText", req.Text.kind.refused},
			{"top_p", "float64", req.TopP.refused64},
			{"truncation", "string", req.Truncation.refused},
			{"tools", "[]openai.ResponsesTool", req.Tools.refused},
			{"stream", "bool", req.Stream.refused()},
		}
	case broker.KindAnthropicMessages:
		members = []memberType{
			{"model", "string", req.Model.refused},
			{"max_tokens", "int", req.MaxTokens.refused},
			{"messages", "[]anthropic.MessageParam", req.Messages.refused},
			{"stream", "bool", req.Stream.refused()},
			{"temperature", "float64", req.Temperature.refused64},
			{"top_p", "float64", req.TopP.refused64},
			{"top_k", "int", req.TopK.refused},
			{"stop_sequences", "[]string", req.StopSequences.refused},
			{"tools", "[]anthropic.Tool", req.Tools.refused},
			{"tool_choice", "anthropic.ToolChoice", req.ToolChoice.refused},
			{"thinking", "anthropic.ThinkingConfig", req.Thinking.refused},
			{"metadata", "anthropic.Metadata", req.Metadata.refused},
		}
	default:
		return nil
	}
	return firstRefused(compatRequestTypes[kind], members)
}

// openAIEmbedRequest is a /v1/embeddings body as requestModel decodes it: the members
// of Ollama's openai.EmbedRequest, each as far as a check reads it ("input" is an any,
// which takes every kind).
type openAIEmbedRequest struct {
	Model          stringMember          `json:"model"`
	Input          *listMember           `json:"input"`
	Dimensions     int64Member           `json:"dimensions"`
	EncodingFormat rawKinded[stringKind] `json:"encoding_format"`
}

// openAIEmbedModel is requestModel for a /v1/embeddings body, with the checks of Ollama's
// EmbeddingsMiddleware in its order: its decoder's, the format's, the input's.
func openAIEmbedModel(body []byte) (model string, read []byte, err error) {
	var req openAIEmbedRequest
	if read, err = decodeObject(body, &req, ""); err != nil {
		return "", nil, err
	}
	if err := firstRefused(compatRequestTypes[broker.KindOpenAIEmbeddings], []memberType{
		{"model", "string", req.Model.refused},
		{"dimensions", "int", req.Dimensions.refused},
		{"encoding_format", "string", req.EncodingFormat.kind.refused},
	}); err != nil {
		return "", nil, err
	}
	// A format that is no string is refused above; it is quoted back clipped, as any
	// value a client sent.
	var format string
	if json.Unmarshal(req.EncodingFormat.raw, &format) == nil && format != "" &&
		!strings.EqualFold(format, "float") && !strings.EqualFold(format, "base64") {
		return "", nil, badRequest(fmt.Sprintf("Invalid value for 'encoding_format' = %s. Supported values: ['float', 'base64'].", clipInput(format)))
	}
	if req.Input.none() {
		// "" is taken as [""]; a body of null has no input either.
		return "", nil, badRequest("invalid input")
	}
	if strings.TrimSpace(req.Model.s) == "" {
		return "", nil, handlerRefusal("model is required")
	}
	return req.Model.s, read, nil
}

// firstRefused is the decoder's 400 for the first of members (of request type typ)
// holding a value of a kind refused, nil for none.
func firstRefused(typ string, members []memberType) error {
	for _, m := range members {
		if m.refused != "" {
			return badRequest(fmt.Sprintf("json: cannot unmarshal %s into Go struct field %s.%s of type %s", m.refused, typ, m.name, m.goType))
		}
	}
	return nil
}
