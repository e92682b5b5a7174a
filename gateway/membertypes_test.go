package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/ollama/ollama/api"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// ollamaDecode decodes body as Ollama's native handler of kind does (v0.17.4
// ShouldBindJSON: a json.Decoder reads the first value into the request type), and
// returns its error, nil when it takes the body.
func ollamaDecode(kind broker.Kind, body []byte) error {
	var req any = &api.ChatRequest{}
	if kind == broker.KindGenerate {
		req = &api.GenerateRequest{}
	}
	return json.NewDecoder(bytes.NewReader(body)).Decode(req)
}

// typeValues are JSON values of every kind, and the values of a kind some of Ollama's
// fields take only in part (an int's fraction, think's and keep_alive's strings).
var typeValues = []string{
	`"x"`, `""`, `5`, `0`, `-1`, `1.5`, `1e3`, `9999999999`, `true`, `false`, `[1]`, `[]`, `["x"]`, `{}`, `{"a":1}`, `null`,
	`"high"`, `"medium"`, `"low"`, `"High"`, `"h\u0069gh"`, `"5m"`, `"-1s"`, `"5"`, `"5x"`, `"1h30m"`,
}

// typeMembers are the members of Ollama's native chat and generate request types, and
// one no type has.
var typeMembers = []string{
	"messages", "prompt", "suffix", "system", "template", "context", "raw", "images", "format",
	"keep_alive", "tools", "options", "think", "truncate", "shift", "_debug_render_only",
	"logprobs", "top_logprobs", "width", "height", "steps", "stream", "model", "unknown",
}

// typeBody is a native body of kind with a model and something to complete, and
// member set to value.
func typeBody(kind broker.Kind, member, value string) string {
	members := []string{`"model":"tiny-a"`, hiMessages}
	if kind == broker.KindGenerate {
		members[1] = `"prompt":"hi"`
	}
	members = slices.DeleteFunc(members, func(m string) bool { return strings.HasPrefix(m, `"`+member+`"`) })
	return "{" + strings.Join(append(members, `"`+member+`":`+value), ",") + "}"
}

// typeRefusal reports whether err is a refusal for a member's type: the decoder's words,
// or think's or keep_alive's decoder's.
func typeRefusal(err error) bool {
	if err == nil {
		return false
	}
	msg := strings.TrimPrefix(err.Error(), "invalid JSON body: ")
	for _, p := range []string{"json: cannot unmarshal ", "invalid think value", "think must be", "Unsupported type: ", "time: "} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// Ollama's own decoder is the judge of a native body's member types: every body foreman
// refuses for a type, Ollama's decoder refuses too, and where the body's only fault is
// one member's value the words are the decoder's; every body whose only fault is a
// top-level member's value that the decoder refuses, foreman refuses. Before, each of
// these was queued (or accepted 202 at POST /jobs) for Ollama to refuse in its turn.
func TestMemberTypesAsOllamaDecodes(t *testing.T) {
	t.Parallel()
	refused := 0
	for _, kind := range []broker.Kind{broker.KindChat, broker.KindGenerate} {
		for _, member := range typeMembers {
			for _, value := range typeValues {
				body := typeBody(kind, member, value)
				_, err := parseInference(kind, []byte(body))
				ollamaErr := ollamaDecode(kind, []byte(body))
				if typeRefusal(err) {
					refused++
					if ollamaErr == nil {
						t.Errorf("%s %s: refused %q, but Ollama's decoder takes it", kind, body, err)
						continue
					}
					if err.Error() != ollamaErr.Error() {
						t.Errorf("%s %s: refused %q, Ollama's decoder says %q", kind, body, err, ollamaErr)
					}
					continue
				}
				if topLevelFault(kind, ollamaErr, member) {
					t.Errorf("%s %s: not refused, but Ollama's decoder says %q", kind, body, ollamaErr)
				}
			}
		}
	}
	if refused == 0 {
		t.Fatal("nothing refused: the corpus proves nothing")
	}
}

// topLevelFault reports whether err is the decoder's refusal of member's own value on
// kind's request type: a type error naming member and the field's own type (not one of
// its elements'), or think's or keep_alive's own decoder's error.
func topLevelFault(kind broker.Kind, err error, member string) bool {
	if err == nil {
		return false
	}
	typ := reflect.TypeFor[api.ChatRequest]()
	if kind == broker.KindGenerate {
		typ = reflect.TypeFor[api.GenerateRequest]()
	}
	var field reflect.Type
	for f := range typ.Fields() {
		if strings.Split(f.Tag.Get("json"), ",")[0] == member {
			field = f.Type
		}
	}
	if field == nil {
		return false // the type has no such member: nothing it holds is refused
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if field.Kind() == reflect.Pointer {
			field = field.Elem()
		}
		return te.Field == member && te.Type == field
	}
	return member == "think" || member == "keep_alive"
}

// Bodies with several faults: whatever foreman refuses, Ollama's decoder refuses; where
// Ollama's decoder stops at the first (a think or keep_alive its own decoder refuses),
// or one member is sent twice, foreman's words are the decoder's.
func TestMemberTypeCombosAsOllamaDecodes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		kind  broker.Kind
		body  string
		exact bool // foreman's words are the decoder's
	}{
		{broker.KindChat, `{"model":"tiny-a","tools":"x","think":5,` + hiMessages + `}`, true},
		{broker.KindChat, `{"model":"tiny-a","options":"x","think":"weird",` + hiMessages + `}`, true},
		{broker.KindChat, `{"model":"tiny-a","keep_alive":[1],"tools":{},` + hiMessages + `}`, true},
		{broker.KindChat, `{"model":"tiny-a","tools":"x","tools":[],` + hiMessages + `}`, true},
		{broker.KindChat, `{"model":"tiny-a","think":"weird","think":true,` + hiMessages + `}`, true},
		{broker.KindChat, `{"model":"tiny-a","TOOLS":"x",` + hiMessages + `}`, true},
		{broker.KindChat, `{"model":"tiny-a","tools":"x","messages":"hi"}`, false},
		{broker.KindChat, `{"model":"tiny-a","messages":[{"role":5}],"tools":"x"}`, false},
		{broker.KindChat, `{"model":"tiny-a","top_logprobs":1.5,"logprobs":"yes",` + hiMessages + `}`, false},
		{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","context":"x","raw":"yes","images":"x"}`, false},
		{broker.KindGenerate, `{"model":"tiny-a","prompt":5,"keep_alive":"5x"}`, true},
		{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","images":["!"],"width":"x"}`, false},
		{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","steps":4294967296}`, true},
	} {
		_, err := parseInference(c.kind, []byte(c.body))
		refusedAsOllama(t, c.kind, c.body, c.exact, err, ollamaDecode(c.kind, []byte(c.body)))
	}
}

// refusedAsOllama checks foreman's refusal err of body (of kind) against ollamaErr, the
// decode of the same body into Ollama's request type: both refuse it, in the same words
// when exact.
func refusedAsOllama(t *testing.T, kind broker.Kind, body string, exact bool, err, ollamaErr error) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s %s: not refused; Ollama's decoder says %v", kind, body, ollamaErr)
	case ollamaErr == nil:
		t.Errorf("%s %s: refused %q, but Ollama's decoder takes it", kind, body, err)
	case exact && err.Error() != ollamaErr.Error():
		t.Errorf("%s %s: refused %q, Ollama's decoder says %q", kind, body, err, ollamaErr)
	}
}

// BenchmarkParseInference is the parse of a chat body with tools, a generate body with a
// 1 MiB image and an OpenAI chat body with its sampling members: the member types cost
// only the first byte of each value (a number's literal).
func BenchmarkParseInference(b *testing.B) {
	chat := []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"what is the weather in Paris?"}],` +
		`"tools":[{"type":"function","function":{"name":"weather","parameters":{"type":"object"}}}],"think":false,"keep_alive":"5m","options":{"temperature":0}}`)
	image := []byte(`{"model":"tiny-a","prompt":"what is in this picture?","images":["` + strings.Repeat("A", 1<<20) + `"],"stream":false}`)
	openAIChat := []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"what is the weather in Paris?"}],` +
		`"tools":[{"type":"function","function":{"name":"weather","parameters":{"type":"object"}}}],"stream":true,` +
		`"stream_options":{"include_usage":true},"max_tokens":256,"temperature":0.7,"top_p":0.9,"seed":42,"stop":["\n"]}`)
	for _, c := range []struct {
		name string
		kind broker.Kind
		body []byte
	}{{"chat", broker.KindChat, chat}, {"generate-image", broker.KindGenerate, image}, {"openai-chat", broker.KindOpenAIChat, openAIChat}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := parseInference(c.kind, c.body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A think or keep_alive string of a body's size costs no more than the body: decoded
// whole and quoted in its refusal, an invalid UTF-8 byte became 3 bytes, and 12 in
// ParseDuration's error, so one 32 MiB body made gigabytes of garbage, past the budget
// of the bodies in flight (ADR-0048). A long think is refused in the words a whole decode
// gives (clipped), a long keep_alive left to Ollama, which refuses or takes it.
func TestMemberTypesLongStringsCostLittle(t *testing.T) {
	thinkWords := func(raw string) string {
		var s string
		if err := json.Unmarshal([]byte(raw), &s); err != nil {
			t.Fatalf("%.40q: %v", raw, err)
		}
		return fmt.Sprintf("invalid think value: %q (must be \"high\", \"medium\", \"low\", true, or false)", clipInput(s))
	}
	// Values whose head's cut falls in a character, a surrogate pair or an escape, at
	// every alignment, and lengths about maxDecodedString.
	units := []string{"\xff", "é", `\u00e9`, `\ud83d\ude00`, "😀", `\\u0041`, `\n`, "x", `\"`}
	for _, unit := range units {
		for pad := range 6 {
			for _, n := range []int{maxDecodedString/len(unit) - 2, maxDecodedString/len(unit) + 2, 3 * maxDecodedString} {
				raw := `"` + strings.Repeat("a", pad) + strings.Repeat(unit, n) + `"`
				body := `{"model":"tiny-a",` + hiMessages + `,"think":` + raw + `}`
				_, err := parseInference(broker.KindChat, []byte(body))
				if ollamaDecode(broker.KindChat, []byte(body)) == nil {
					t.Fatalf("Ollama's decoder takes think %.60q", raw)
				}
				if want := thinkWords(raw); err == nil || err.Error() != want {
					t.Errorf("think %.60q (%d bytes): refused %v, want %q", raw, len(raw), err, want)
				}
				// A long keep_alive is left to Ollama; a short one is refused at once.
				body = `{"model":"tiny-a",` + hiMessages + `,"keep_alive":` + raw + `}`
				_, err = parseInference(broker.KindChat, []byte(body))
				if long := len(raw) > maxDecodedString; long != (err == nil) {
					t.Errorf("keep_alive %.60q (%d bytes): refused %v", raw, len(raw), err)
				}
			}
		}
	}
	// A long keep_alive Ollama takes is taken.
	body := `{"model":"tiny-a",` + hiMessages + `,"keep_alive":"` + strings.Repeat("0", 4*maxDecodedString) + `5m"}`
	if _, err := parseInference(broker.KindChat, []byte(body)); err != nil || ollamaDecode(broker.KindChat, []byte(body)) != nil {
		t.Errorf("a long keep_alive Ollama takes: refused %v (Ollama: %v)", err, ollamaDecode(broker.KindChat, []byte(body)))
	}
	// What the parse of a 4 MiB value costs: the value's copy kept raw, and no more.
	value := `"` + strings.Repeat("\xff", 4<<20) + `"`
	for _, member := range []string{"think", "keep_alive"} {
		body := []byte(`{"model":"tiny-a",` + hiMessages + `,"` + member + `":` + value + `}`)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := parseInference(broker.KindChat, body)
		runtime.ReadMemStats(&after)
		if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 2*uint64(len(body)) {
			t.Errorf("%s of %d bytes (refused %.60v): the parse allocated %d bytes, %.1f times the body",
				member, len(value), err, allocated, float64(allocated)/float64(len(body)))
		}
	}
}
