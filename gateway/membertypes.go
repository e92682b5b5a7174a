package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// The members of a native chat or generate body are checked as Ollama's decoder checks
// them against the Go types of its request's fields (v0.17.4 api.ChatRequest,
// api.GenerateRequest), by the JSON kind of each value alone: a value its field can never
// take is the decoder's 400, before Ollama looks at anything else (ADR-0141). Queued, such
// a call waited its turn to be refused; a POST /jobs job was accepted to fail. Only the
// kind of a value is read (its first byte), never the value itself, but for the few
// small ones a custom decoder of Ollama's reads (think, keep_alive): messages and images
// may be megabytes. A refusal is never made where Ollama's decoder would take the value.

// jsonKind is the kind of a JSON value as encoding/json names it in an UnmarshalTypeError:
// "string", "number", "bool", "array", "object", or "null". b is one valid JSON value (the
// decoder checked the whole body before it hands a member's value on).
func jsonKind(b []byte) string {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 {
		return "null"
	}
	switch b[0] {
	case '"':
		return "string"
	case '[':
		return "array"
	case '{':
		return "object"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	}
	return "number"
}

// kindRule says which JSON kinds (null aside, which every field takes) a Go type takes.
type kindRule interface{ takes(kind string) bool }

type (
	stringKind struct{} // a string field
	boolKind   struct{} // a bool or *bool field
	arrayKind  struct{} // a slice field
)

func (stringKind) takes(k string) bool { return k == "string" }
func (boolKind) takes(k string) bool   { return k == "bool" }
func (arrayKind) takes(k string) bool  { return k == "array" }

// typed is a member whose Ollama field takes the JSON kinds of R: refused is the kind of
// the first value it cannot take (the decoder keeps the first such error, whatever
// follows), holds what nonEmpty reads of the last value.
type typed[R kindRule] struct {
	refused string
	holds   nonEmpty
}

func (m *typed[R]) UnmarshalJSON(b []byte) error {
	var rule R
	k := jsonKind(b)
	if m.refused == "" && k != "null" && !rule.takes(k) {
		m.refused = k
	}
	if k == "null" && !rule.takes("array") {
		// The decoder's null leaves a string or bool field as it was ("prompt":"hi",
		// "prompt":null is "hi"); a slice it empties.
		return nil
	}
	return m.holds.UnmarshalJSON(b)
}

// intRefused is the value encoding/json names when it refuses b for an int field of
// bits bits ("number 1.5", "string"), "" when the field takes it. A number it quotes is
// clipped (numberWords), as any value a client sent.
func intRefused(b []byte, bits int) string {
	switch k := jsonKind(b); k {
	case "null":
		return ""
	case "number":
		if _, ok := intTaken(b, bits); ok {
			return ""
		}
		return numberWords(b)
	default:
		return k
	}
}

// maxIntLiteral is the longest number literal an int field of 64 bits or fewer takes:
// "-9223372036854775808" (a JSON number has no leading zeros, nor a "+").
const maxIntLiteral = 20

// intTaken is the value encoding/json sets an int field of bits bits to from b, a number
// literal; ok is false when it refuses b (a fraction, an exponent, a number past the
// type's range). A literal longer than any such field takes is not parsed: one of a
// body's size would be copied and parsed whole, and copied again into strconv's error.
func intTaken(b []byte, bits int) (n int64, ok bool) {
	lit := bytes.TrimSpace(b)
	if jsonKind(lit) != "number" || len(lit) > maxIntLiteral {
		return 0, false
	}
	n, err := strconv.ParseInt(string(lit), 10, bits)
	return n, err == nil
}

// numberWords is how encoding/json names a number literal b it refuses ("number 1.5"),
// the literal clipped as clipInput clips a value: its refusal quotes the literal whole,
// and a literal may be as long as the body (ADR-0142's amendment). A literal is ASCII.
func numberWords(b []byte) string {
	lit := bytes.TrimSpace(b)
	return "number " + clipInput(string(lit[:min(len(lit), maxQuoted+1)]))
}

// int32Member is an int32 member of a generate body (width, height, steps): refused as
// intMember's.
type int32Member struct{ refused string }

func (m *int32Member) UnmarshalJSON(b []byte) error {
	if m.refused == "" {
		m.refused = intRefused(b, 32)
	}
	return nil
}

// customMember is a member whose Ollama type decodes itself (think, keep_alive): raw is
// the last value as sent, refused the error words of the first value that type's
// decoder refuses. Such an error ends Ollama's decode where it is met, so it comes before
// any type error of another member, wherever that is in the body.
type customMember struct {
	raw     json.RawMessage
	refused string
}

// take keeps b as the last value and, when no value before it was refused, refusal's
// words for it.
func (m *customMember) take(b []byte, refusal func([]byte) string) error {
	m.raw = append(m.raw[:0], b...)
	if m.refused == "" {
		m.refused = refusal(b)
	}
	return nil
}

// thinkMember is a native "think" (api.ThinkValue): true, false, "high", "medium" or
// "low".
type thinkMember struct{ customMember }

func (m *thinkMember) UnmarshalJSON(b []byte) error { return m.take(b, thinkRefused) }

// keepAliveMember is a native "keep_alive" (api.Duration): a number of seconds or a Go
// duration string.
type keepAliveMember struct{ customMember }

func (m *keepAliveMember) UnmarshalJSON(b []byte) error { return m.take(b, keepAliveRefused) }

// thinkRefused is api.ThinkValue's UnmarshalJSON's error for b in its words, "" for none
// (null never reaches it: the field is a pointer). A string it quotes is clipped, as any
// value a client sent.
func thinkRefused(b []byte) string {
	switch jsonKind(b) {
	case "null", "bool":
		return ""
	case "string":
		s, whole, ok := jsonStringHead(b)
		if !ok || whole && (s == "high" || s == "medium" || s == "low") {
			return ""
		}
		return fmt.Sprintf("invalid think value: %q (must be \"high\", \"medium\", \"low\", true, or false)", clipInput(s))
	}
	return `think must be a boolean or string ("high", "medium", "low", true, or false)`
}

// keepAliveRefused is api.Duration's UnmarshalJSON's error for b in its words, "" for
// none: a string must be one time.ParseDuration reads (its error is the words); a
// number is taken (one past float64's range is left to Ollama, which refuses it). A
// string longer than maxDecodedString is left to Ollama too: no duration a client sends
// is near that long, and ParseDuration's error quotes the whole string, each byte of it
// up to four times over (an invalid UTF-8 byte, decoded as U+FFFD, is twelve bytes).
func keepAliveRefused(b []byte) string {
	switch jsonKind(b) {
	case "null", "number":
		return ""
	case "string":
		if len(bytes.TrimSpace(b)) > maxDecodedString {
			return ""
		}
		s, ok := jsonString(b)
		if !ok {
			return ""
		}
		if _, err := time.ParseDuration(s); err != nil {
			return clipInput(err.Error())
		}
		return ""
	case "bool":
		return "Unsupported type: 'bool'"
	case "array":
		return "Unsupported type: '[]interface {}'"
	}
	return "Unsupported type: 'map[string]interface {}'"
}

// maxDecodedString is the longest think or keep_alive string value (as sent, quotes and
// escapes included) decoded whole. The values those members take are a few bytes; one
// of a request body's size, decoded and quoted whole, would cost many times the body
// (jsonStringHead, keepAliveRefused), past the budget of the bodies in flight (ADR-0048).
const maxDecodedString = 2048

// quotedHead is how much of a longer string jsonStringHead decodes: a JSON escape is at
// most 6 bytes (\uXXXX) for one byte or more of the value, so this many bytes hold more
// than the maxQuoted+1 clipInput reads, with room for a character or a surrogate pair
// the cut splits (decoded as U+FFFD at the head's end).
const quotedHead = 6 * (maxQuoted + 16)

// jsonStringHead is the string JSON value b holds (jsonString), whole when b is at most
// maxDecodedString bytes long. Of a longer one only the head is decoded (whole false),
// which clipInput quotes as it quotes the whole value.
func jsonStringHead(b []byte) (s string, whole, ok bool) {
	b = bytes.TrimSpace(b)
	if len(b) <= maxDecodedString {
		s, ok = jsonString(b)
		return s, true, ok
	}
	if b[0] != '"' || b[len(b)-1] != '"' {
		return "", false, false
	}
	c := b[1 : len(b)-1]
	i := 0
	for i < len(c) && i < quotedHead { // cut between escapes, never in one
		switch {
		case c[i] != '\\':
			i++
		case i+1 < len(c) && c[i+1] == 'u':
			i += 6
		default:
			i += 2
		}
	}
	i = min(i, len(c))
	head := make([]byte, 0, i+2)
	head = append(append(append(head, '"'), c[:i]...), '"')
	s, ok = jsonString(head)
	return s, false, ok
}

// jsonString is the string JSON value b holds, as encoding/json decodes it; ok is false
// when b holds none. A plain one (printable ASCII, no escape) is read without a decoder:
// think's and keep_alive's are read on every call that has them.
func jsonString(b []byte) (s string, ok bool) {
	b = bytes.TrimSpace(b)
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return "", false
	}
	plain := true
	for _, c := range b[1 : len(b)-1] {
		if c < 0x20 || c >= 0x80 || c == '\\' || c == '"' {
			plain = false
			break
		}
	}
	if plain {
		return string(b[1 : len(b)-1]), true
	}
	var v string // not s: a variable the decoder is given is on the heap from its start
	return v, json.Unmarshal(b, &v) == nil
}

// logprobsMember is "logprobs": the native routes' and /v1/chat/completions' bool,
// /v1/completions' *int (kept raw for checkTopLogprobs).
type logprobsMember struct {
	raw    json.RawMessage
	asBool typed[boolKind]
	asInt  int64Member
}

func (m *logprobsMember) UnmarshalJSON(b []byte) error {
	m.raw = append(m.raw[:0], b...)
	_ = m.asInt.UnmarshalJSON(b)
	return m.asBool.UnmarshalJSON(b)
}

// memberType is one member of a native request type as its decoder's refusal names it.
type memberType struct {
	name, goType string
	refused      string // the JSON kind of the value refused ("number 1.5" for an int)
}

// nativeTypeRefusal is the 400 of Ollama's decoder for a native chat or generate body
// (req, as parseInference decoded it) with a member of a kind its field cannot take, in
// the decoder's words; nil for none or another kind. A value its own decoder refuses
// (think, keep_alive) ends the decode, so its words come first (decodeAborted); of the
// others the decoder names the first in the body, which is not known here: the first in
// the request type's order is named, a true 400 all the same.
func nativeTypeRefusal(kind broker.Kind, req *inferenceRequest) error {
	typ := ollamaRequestTypes[kind]
	var members []memberType
	switch kind {
	case broker.KindChat:
		members = []memberType{
			{"model", "string", req.Model.refused},
			{"messages", "[]api.Message", req.Messages.refused},
			{"stream", "bool", req.Stream.refused()},
			{"tools", "api.Tools", req.Tools.refused},
			{"options", "map[string]interface {}", req.Options.NotAnObject()},
			{"truncate", "bool", req.Truncate.refused},
			{"shift", "bool", req.Shift.refused},
			{"_debug_render_only", "bool", req.DebugRenderOnly.refused},
			{"logprobs", "bool", req.Logprobs.asBool.refused},
			{"top_logprobs", "int", req.TopLogprobs.refused},
		}
	case broker.KindGenerate:
		members = []memberType{
			{"model", "string", req.Model.refused},
			{"prompt", "string", req.Prompt.refused},
			{"suffix", "string", req.Suffix.refused},
			{"system", "string", req.System.refused},
			{"template", "string", req.Template.refused},
			{"context", "[]int", req.Context.refused},
			{"stream", "bool", req.Stream.refused()},
			{"raw", "bool", req.Raw.refused},
			{"images", "[]api.ImageData", req.Images.refused},
			{"options", "map[string]interface {}", req.Options.NotAnObject()},
			{"truncate", "bool", req.Truncate.refused},
			{"shift", "bool", req.Shift.refused},
			{"_debug_render_only", "bool", req.DebugRenderOnly.refused},
			{"logprobs", "bool", req.Logprobs.asBool.refused},
			{"top_logprobs", "int", req.TopLogprobs.refused},
			{"width", "int32", req.Width.refused},
			{"height", "int32", req.Height.refused},
			{"steps", "int32", req.Steps.refused},
		}
	default:
		return nil
	}
	return firstRefused(typ, members)
}

// decodeAborted is the 400 of a native chat or generate body whose think or keep_alive
// Ollama's own decoders of them refuse, in their words; nil for none or another kind.
// Such an error ends Ollama's decode, so it comes before every type refusal (the
// stream's, the options', nativeTypeRefusal's).
func decodeAborted(kind broker.Kind, req *inferenceRequest) error {
	if kind != broker.KindChat && kind != broker.KindGenerate {
		return nil
	}
	for _, refused := range []string{req.Think.refused, req.KeepAlive.refused} {
		if refused != "" {
			return badRequest(refused)
		}
	}
	return nil
}

// jsonRunes calls yield with each character of the JSON string value b (quotes and all,
// as sent) as encoding/json decodes it, without decoding it into memory: an invalid UTF-8
// byte and a lone surrogate are U+FFFD. It stops when yield returns false; ok is false
// when b is no valid JSON string.
func jsonRunes(b []byte, yield func(r rune) bool) (ok bool) {
	b = bytes.TrimSpace(b)
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return false
	}
	s := b[1 : len(b)-1]
	for r := 0; r < len(s); {
		var c rune
		switch {
		case s[r] == '\\':
			if r+1 >= len(s) {
				return false
			}
			switch e := s[r+1]; e {
			case '"', '\\', '/', '\'':
				c, r = rune(e), r+2
			case 'b':
				c, r = '\b', r+2
			case 'f':
				c, r = '\f', r+2
			case 'n':
				c, r = '\n', r+2
			case 'r':
				c, r = '\r', r+2
			case 't':
				c, r = '\t', r+2
			case 'u':
				c = hex4(s[r:])
				if c < 0 {
					return false
				}
				r += 6
				if utf16.IsSurrogate(c) {
					if d := utf16.DecodeRune(c, hex4(s[r:])); d != unicode.ReplacementChar {
						c, r = d, r+6
					} else {
						c = unicode.ReplacementChar
					}
				}
			default:
				return false
			}
		case s[r] == '"' || s[r] < ' ':
			return false
		case s[r] < utf8.RuneSelf:
			c, r = rune(s[r]), r+1
		default:
			var size int
			c, size = utf8.DecodeRune(s[r:])
			r += size
		}
		if !yield(c) {
			return true
		}
	}
	return true
}

// hex4 is the character of the escape \uXXXX that s begins with, -1 for none.
func hex4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	n, err := strconv.ParseUint(string(s[2:6]), 16, 16)
	if err != nil {
		return -1
	}
	return rune(n)
}

// maxModelString is the longest model string value (as sent) decoded whole. A JSON
// string of more bytes holds more than a sixth as many (an escape is at most six bytes
// for one byte or more), past the longest name Ollama takes (a host of 350 bytes, a
// namespace, model, tag and digest of 80 each).
const maxModelString = 8 << 10

// modelString is the model a JSON string value b names, as jsonString reads it; ok is
// false when b holds no string. A value longer than maxModelString, which names no model
// Ollama has or takes, is not decoded whole (each invalid UTF-8 byte of it would be three
// bytes, and encoding/json's buffer grows by doubling: ten times the value, all told): it
// stands in for it a string that every check of a model name answers as it answers the
// whole (checkModelName, ollama.ValidModelName, a blank name's refusal) and quotes as it
// quotes the whole (clipInput): its decoded head, then U+FFFD, a DEL when the value holds
// a control character, a space when it ends in one; the head alone when it is all white
// space.
func modelString(b []byte) (s string, ok bool) {
	if len(bytes.TrimSpace(b)) <= maxModelString {
		return jsonString(b)
	}
	var (
		control, allSpace = false, true
		last              rune
	)
	if !jsonRunes(b, func(r rune) bool {
		control = control || unicode.IsControl(r)
		allSpace = allSpace && unicode.IsSpace(r)
		last = r
		return true
	}) {
		return "", false
	}
	head, _, _ := jsonStringHead(b)
	if allSpace {
		return head, true
	}
	var stand strings.Builder
	stand.WriteString(head)
	stand.WriteRune(unicode.ReplacementChar)
	if control {
		stand.WriteByte(0x7f)
	}
	if unicode.IsSpace(last) {
		stand.WriteByte(' ')
	}
	return stand.String(), true
}

// maxWord is longer than any JSON string value (as sent, escapes included) that holds
// one of the few words a shortWord or trimmedWord is compared with.
const maxWord = 128

// shortWord is a string member read only to be compared with a few short words ("high",
// "json_schema"): a value longer than maxWord holds none of them, and is not decoded
// (it may be as long as the body). A value of another kind is the decoder's error.
type shortWord string

func (w *shortWord) UnmarshalJSON(b []byte) error {
	if jsonKind(b) == "string" && len(bytes.TrimSpace(b)) > maxWord {
		*w = "\uFFFD"
		return nil
	}
	return json.Unmarshal(b, (*string)(w))
}

// trimmedWord is a string member read, white space around it trimmed (strings.TrimSpace),
// only to be compared with a few short words ("json_object"): a value longer than
// maxDecodedString is not decoded whole but read character by character, and is what it
// holds trimmed when that is short, else U+FFFD. A value of another kind is the
// decoder's error.
type trimmedWord string

func (w *trimmedWord) UnmarshalJSON(b []byte) error {
	if jsonKind(b) != "string" || len(bytes.TrimSpace(b)) <= maxDecodedString {
		return json.Unmarshal(b, (*string)(w))
	}
	var (
		word, spaces      []byte // the word so far, and the white space after it so far
		started, tooLong  bool
		manySpacesBetween bool
	)
	jsonRunes(b, func(r rune) bool {
		if unicode.IsSpace(r) {
			switch {
			case !started:
			case len(spaces) <= maxWord:
				spaces = utf8.AppendRune(spaces, r)
			default:
				manySpacesBetween = true
			}
			return true
		}
		started = true
		word = utf8.AppendRune(append(word, spaces...), r)
		spaces = spaces[:0]
		tooLong = manySpacesBetween || len(word) > maxWord
		return !tooLong
	})
	if tooLong {
		*w = "\uFFFD"
		return nil
	}
	*w = trimmedWord(word)
	return nil
}
