package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"net/http"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ollama/ollama/anthropic"
	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/openai"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// compatTypes are the request types of Ollama's OpenAI and Anthropic layers (v0.17.4),
// each with a body its route takes (the member under test is added to it, in place of
// its own).
var compatTypes = []struct {
	kind broker.Kind
	typ  reflect.Type
	base []string
}{
	{broker.KindOpenAIChat, reflect.TypeFor[openai.ChatCompletionRequest](), []string{`"model":"tiny-a"`, hiMessages}},
	{broker.KindOpenAICompletion, reflect.TypeFor[openai.CompletionRequest](), []string{`"model":"tiny-a"`, `"prompt":"hi"`}},
	{broker.KindOpenAIResponses, reflect.TypeFor[openai.ResponsesRequest](), []string{`"model":"tiny-a"`, `"input":"hi"`}},
	{broker.KindAnthropicMessages, reflect.TypeFor[anthropic.MessagesRequest](), []string{`"model":"tiny-a"`, `"max_tokens":4`, hiMessages}},
	{broker.KindOpenAIEmbeddings, reflect.TypeFor[openai.EmbedRequest](), []string{`"model":"tiny-a"`, `"input":"hi"`}},
	{broker.KindOpenAIImages, reflect.TypeFor[openai.ImageGenerationRequest](), []string{`"model":"tiny-a"`, `"prompt":"a cat"`}},
	{broker.KindOpenAIImageEdits, reflect.TypeFor[openai.ImageEditRequest](), []string{`"model":"tiny-a"`, `"prompt":"a cat"`, `"image":"` + pngData + `"`}},
}

// compatValues are typeValues and the numbers a float32, a float64 or an int64 cannot
// hold, and those about float32's largest (one that rounds to it, one past half its last
// step, float32's largest itself).
var compatValues = append(slices.Clone(typeValues), `1e39`, `-1e39`, `1e400`, `9223372036854775808`, `1.0`,
	`3.40282356e38`, `-3.40282357e38`, `3.4028234663852886e38`)

// jsonMembers are the members typ's decoder reads, by their JSON names.
func jsonMembers(typ reflect.Type) []string {
	var names []string
	for f := range typ.Fields() {
		if name := strings.Split(f.Tag.Get("json"), ",")[0]; name != "" && name != "-" {
			names = append(names, name)
		}
	}
	return names
}

// compatBody is base with member set to value.
func compatBody(base []string, member, value string) string {
	members := slices.DeleteFunc(slices.Clone(base), func(m string) bool { return strings.HasPrefix(m, `"`+member+`"`) })
	return "{" + strings.Join(append(members, `"`+member+`":`+value), ",") + "}"
}

// compatParse is what foreman answers a body of kind: its sync route's refusals before
// the model is looked up (requestModel on /v1/embeddings, parseQueued on the others).
func compatParse(kind broker.Kind, body []byte) error {
	if kind == broker.KindOpenAIEmbeddings {
		_, _, _, err := requestModel(kind.Path(), body)
		return err
	}
	_, err := parseQueued(kind, body)
	return err
}

// compatDecode decodes body as the middleware of Ollama's layer decodes it
// (ShouldBindJSON: a json.Decoder reads the first value into the request type typ).
func compatDecode(typ reflect.Type, body []byte) error {
	return json.NewDecoder(bytes.NewReader(body)).Decode(reflect.New(typ).Interface())
}

// compatTypeRefused reports whether err is a refusal of a member's type on an OpenAI or
// Anthropic route: its decoder's words, or /v1/responses' input decoder's.
func compatTypeRefused(err error) bool {
	if err == nil {
		return false
	}
	msg := strings.TrimPrefix(err.Error(), "invalid JSON body: ")
	return strings.HasPrefix(msg, "json: cannot unmarshal ") || strings.HasPrefix(msg, "input must be a string or array")
}

// compatTopLevelFault reports whether err is typ's decoder's refusal of member's own
// value: a type error naming member and the field's own type (not one of its
// elements'), or ResponsesInput's own decoder's refusal of a value that is neither a
// string nor a list.
func compatTopLevelFault(typ reflect.Type, err error, member string) bool {
	if err == nil {
		return false
	}
	f, ok := typ.FieldByNameFunc(func(name string) bool {
		sf, _ := typ.FieldByName(name)
		return strings.Split(sf.Tag.Get("json"), ",")[0] == member
	})
	if !ok {
		return false // the type has no such member: nothing it holds is refused
	}
	field := f.Type
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if field.Kind() == reflect.Pointer {
			field = field.Elem()
		}
		return te.Field == member && te.Type == field
	}
	return typ == reflect.TypeFor[openai.ResponsesRequest]() && member == "input" && strings.HasPrefix(err.Error(), "input must be a string or array: ")
}

// Ollama's own decoders are the judges of the OpenAI and Anthropic bodies' member types:
// every body foreman refuses for a type, the decoder of the route's layer refuses too,
// and where the body's only fault is one member's value the words are the decoder's;
// every body whose only fault is a top-level member's value that the decoder refuses,
// foreman refuses. Before, those were queued (or accepted 202 at POST /jobs) for Ollama
// to refuse in their turn.
func TestCompatMemberTypesAsOllamaDecodes(t *testing.T) {
	t.Parallel()
	refused := 0
	for _, c := range compatTypes {
		for _, member := range append(jsonMembers(c.typ), "unknown", "options", "think") {
			for _, value := range compatValues {
				body := compatBody(c.base, member, value)
				err := compatParse(c.kind, []byte(body))
				ollamaErr := compatDecode(c.typ, []byte(body))
				if compatTypeRefused(err) {
					refused++
					switch {
					case ollamaErr == nil:
						t.Errorf("%s %s: refused %q, but Ollama's decoder takes it", c.kind, body, err)
					case err.Error() != ollamaErr.Error():
						t.Errorf("%s %s: refused %q, Ollama's decoder says %q", c.kind, body, err, ollamaErr)
					}
					continue
				}
				if compatTopLevelFault(c.typ, ollamaErr, member) {
					t.Errorf("%s %s: not refused (%v), but Ollama's decoder says %q", c.kind, body, err, ollamaErr)
				}
			}
		}
	}
	if refused == 0 {
		t.Fatal("nothing refused: the corpus proves nothing")
	}
}

// Bodies with several faults: whatever foreman refuses, Ollama's layer's decoder refuses;
// where that decoder stops at the first (an /v1/responses input its own decoder refuses),
// or one member is sent twice, foreman's words are the decoder's.
func TestCompatMemberTypeCombosAsOllamaDecodes(t *testing.T) {
	t.Parallel()
	chat := reflect.TypeFor[openai.ChatCompletionRequest]()
	responses := reflect.TypeFor[openai.ResponsesRequest]()
	for _, c := range []struct {
		kind  broker.Kind
		typ   reflect.Type
		body  string
		exact bool // foreman's words are the decoder's
	}{
		{broker.KindOpenAIChat, chat, `{"model":"tiny-a","tools":"x","tools":[],` + hiMessages + `}`, true},
		{broker.KindOpenAIChat, chat, `{"model":"tiny-a","temperature":"hot","temperature":0.5,` + hiMessages + `}`, true},
		{broker.KindOpenAIChat, chat, `{"model":"tiny-a","TEMPERATURE":"hot",` + hiMessages + `}`, true},
		// A null after a value the decoder refused: it keeps its first error.
		{broker.KindOpenAIChat, chat, `{"model":"tiny-a","messages":"x","messages":null}`, true},
		{broker.KindOpenAIChat, chat, `{"model":"tiny-a","messages":5,"messages":null,"messages":"x",` + hiMessages + `}`, true},
		{broker.KindAnthropicMessages, reflect.TypeFor[anthropic.MessagesRequest](), `{"model":"tiny-a","max_tokens":4,"Messages":{},"messages":null,` + hiMessages + `}`, true},
		{broker.KindOpenAIChat, chat, `{"model":5,"messages":"hi"}`, false},
		{broker.KindOpenAIChat, chat, `{"model":"tiny-a","messages":[],"max_tokens":"x"}`, true},
		{broker.KindOpenAIChat, chat, `{"model":"tiny-a","top_logprobs":99,"seed":1.5,` + hiMessages + `}`, true},
		{broker.KindOpenAIResponses, responses, `{"model":"tiny-a","tools":"x","input":5}`, true},
		{broker.KindOpenAIResponses, responses, `{"model":5,"input":{}}`, true},
		{broker.KindOpenAIResponses, responses, `{"model":"tiny-a","input":"hi","input":5}`, true},
		{broker.KindAnthropicMessages, reflect.TypeFor[anthropic.MessagesRequest](), `{"model":"","max_tokens":"x",` + hiMessages + `}`, true},
		{broker.KindOpenAIEmbeddings, reflect.TypeFor[openai.EmbedRequest](), `{"model":"tiny-a","input":[],"encoding_format":5}`, true},
	} {
		refusedAsOllama(t, c.kind, c.body, c.exact, compatParse(c.kind, []byte(c.body)), compatDecode(c.typ, []byte(c.body)))
	}
}

// The members of the native request types that the OpenAI and Anthropic types have not,
// or hold as an any, are no refusal on those routes: their layers ignore them, or take
// every kind.
func TestCompatIgnoresNativeMembers(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		kind broker.Kind
		body string
	}{
		{broker.KindOpenAIChat, `{"model":"tiny-a",` + hiMessages + `,"think":"weird","keep_alive":[1],"raw":"x","images":"x","stop":5,"options":"x"}`},
		{broker.KindOpenAICompletion, `{"model":"tiny-a","prompt":"hi","logprobs":2,"system":5,"context":"x","stop":{}}`},
		{broker.KindOpenAIResponses, `{"model":"tiny-a","input":"hi","truncate":5,"conversation":5,"messages":"x"}`},
		{broker.KindAnthropicMessages, `{"model":"tiny-a","max_tokens":4,` + hiMessages + `,"system":5,"think":5,"stream":false,"prompt":5}`},
	} {
		if _, err := parseInference(c.kind, []byte(c.body)); err != nil {
			t.Errorf("%s %s: refused %q", c.kind, c.body, err)
		}
	}
}

// A body of a member type the OpenAI or Anthropic layer's decoder refuses is answered at
// once, in that layer's error shape and bytes (gin's, as its middleware aborts the call),
// with no job made and nothing sent to Ollama: the bundle runs no worker, so a call
// queued would never be answered (the test's deadline would end it).
func TestCompatMemberTypesRefusedAtOnceInTheLayersShape(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	reqID := regexp.MustCompile(`"req_[0-9a-f]{24}"`)
	openAI := func(msg string) string {
		return `{"error":{"message":"` + msg + `","type":"invalid_request_error","param":null,"code":null}}`
	}
	for _, c := range []struct{ path, body, want string }{
		{"/v1/chat/completions", `{"model":"tiny-a","messages":"hi"}`,
			openAI("json: cannot unmarshal string into Go struct field ChatCompletionRequest.messages of type []openai.Message")},
		{"/v1/chat/completions", `{"model":"tiny-a",` + hiMessages + `,"stream":true,"stream_options":5}`,
			openAI("json: cannot unmarshal number into Go struct field ChatCompletionRequest.stream_options of type openai.StreamOptions")},
		{"/v1/completions", `{"model":"tiny-a","prompt":"hi","max_tokens":"x"}`,
			openAI("json: cannot unmarshal string into Go struct field CompletionRequest.max_tokens of type int")},
		{"/v1/responses", `{"model":"tiny-a","input":true}`,
			openAI("input must be a string or array: json: cannot unmarshal bool into Go value of type []json.RawMessage")},
		{"/v1/embeddings", `{"model":"tiny-a","input":"hi","dimensions":"x"}`,
			openAI("json: cannot unmarshal string into Go struct field EmbedRequest.dimensions of type int")},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":4,` + hiMessages + `,"temperature":"hot"}`,
			`{"type":"error","error":{"type":"invalid_request_error","message":"json: cannot unmarshal string into Go struct field ` +
				`MessagesRequest.temperature of type float64"},"request_id":"req_ID"}`},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		body := reqID.ReplaceAllString(string(got.Body), `"req_ID"`)
		if got.Status != http.StatusBadRequest || got.CType != "application/json; charset=utf-8" || body != c.want {
			t.Errorf("%s %s: %d %q %s\nwant 400 %s", c.path, c.body, got.Status, got.CType, body, c.want)
		}
	}
	for _, call := range b.Fake.Calls() {
		if call.Method == http.MethodPost && call.Path != "/api/show" {
			t.Errorf("a refused request reached the target: %s %s", call.Path, call.Body)
		}
	}
	if jobs, _, err := b.Broker.Store.List(ctx, broker.ListOptions{}); err != nil || len(jobs) != 0 {
		t.Errorf("jobs after the refusals: %d, %v; want none", len(jobs), err)
	}
}

// clipNumberWords is err's text with the number literal it quotes clipped as foreman
// clips it (numberWords): Ollama's decoder quotes the literal whole.
func clipNumberWords(err error) string {
	msg := err.Error()
	const p = "json: cannot unmarshal number "
	if !strings.HasPrefix(msg, p) {
		return msg
	}
	rest := msg[len(p):]
	lit, tail, _ := strings.Cut(rest, " ")
	return "json: cannot unmarshal " + numberWords([]byte(lit)) + " " + tail
}

// A number literal of a body's size in an int or float member costs no more than the
// body, and is quoted back clipped: it was copied whole, parsed whole, copied into
// strconv's error and into the refusal (5 to 8 times the body, and a 400 as large as the
// body, larger than a NATS reply may be); each duplicate of max_tokens or top_logprobs
// was decoded again (3 times the body). Ollama's decoder takes and refuses the same
// bodies, in the same words but for the literal's clip.
func TestMemberTypesLongNumbersCostLittle(t *testing.T) {
	// A quarter MiB: a literal of any size past maxFloatLiteral costs in proportion, and
	// the decodes of bodies of 4 MiB took minutes under the race detector.
	const n = 256 << 10
	pad := strings.Repeat("0", n)
	values := []string{
		strings.Repeat("1", n), // past every type's range
		"0." + pad + "1",       // a float64 and a float32 take it (0), an int refuses it
		"3.5" + pad + "e38",    // past float32's range, not float64's
		"-1" + pad + "e-" + strings.Repeat("0", 1000) + strconv.Itoa(n-4), // about -1e4: an int refuses it
		"1" + pad[:1000] + "e-1000",                                       // 1: every type but an int takes it
	}
	dup := func(member, value string) string {
		var b strings.Builder
		for b.Len() < n {
			b.WriteString(`"` + member + `":` + value + `,`)
		}
		return b.String()
	}
	type target struct {
		kind broker.Kind
		typ  reflect.Type
		base []string
	}
	targets := []target{{broker.KindChat, reflect.TypeFor[api.ChatRequest](), []string{`"model":"tiny-a"`, hiMessages}},
		{broker.KindGenerate, reflect.TypeFor[api.GenerateRequest](), []string{`"model":"tiny-a"`, `"prompt":"hi"`}}}
	for _, c := range compatTypes[:5] {
		targets = append(targets, target{c.kind, c.typ, c.base})
	}
	checked := 0
	for _, c := range targets {
		for _, member := range []string{"max_tokens", "seed", "top_logprobs", "logprobs", "max_output_tokens", "top_k",
			"dimensions", "temperature", "top_p", "frequency_penalty", "presence_penalty", "width", "steps"} {
			if !slices.Contains(jsonMembers(c.typ), member) {
				continue
			}
			for _, value := range values {
				for _, s := range []string{compatBody(c.base, member, value),
					"{" + dup(member, value[:min(len(value), 4096)]) + strings.Join(c.base, ",") + "}"} {
					body := []byte(s)
					var before, after runtime.MemStats
					runtime.GC()
					runtime.ReadMemStats(&before)
					err := compatParse(c.kind, body)
					runtime.ReadMemStats(&after)
					if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 2*uint64(len(body))+16<<10 {
						t.Errorf("%s %s %.30s… (%d bytes): the parse allocated %d bytes, %.1f times the body",
							c.kind, member, value, len(body), allocated, float64(allocated)/float64(len(body)))
					}
					ollamaErr := compatDecode(c.typ, body)
					switch {
					case ollamaErr == nil && err != nil:
						t.Errorf("%s %s %.30s…: refused %.300q, Ollama's decoder takes it", c.kind, member, value, err)
					case ollamaErr != nil && (err == nil || err.Error() != clipNumberWords(ollamaErr)):
						t.Errorf("%s %s %.30s…: refused %.300v, want %.300q", c.kind, member, value, err, clipNumberWords(ollamaErr))
					}
					if err != nil && len(err.Error()) > 400 {
						t.Errorf("%s %s: a refusal of %d bytes", c.kind, member, len(err.Error()))
					}
					checked++
				}
			}
		}
	}
	if checked < 100 {
		t.Fatalf("%d bodies checked", checked)
	}
}

// shortFloatLiteral's literal is parsed as the long one it stands for, to the bit, and
// refused where that is refused: about each type's largest, and about the numbers
// halfway between two floats (which a literal's later digits round one way or the other).
func TestShortFloatLiteral(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	zeros := func(n int) string { return strings.Repeat("0", n) }
	digits := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte('0' + r.IntN(10))
		}
		return string(b)
	}
	var lits []string
	for _, head := range []string{
		"1.7976931348623157", "1.7976931348623158", "1.797693134862315807937", "1.7976931348623159",
		"3.4028234663852886", "3.40282356779733661637539395458142568448", "3.40282357", "3.4028235",
		// halfway between two float64s and two float32s: the digits after decide
		"1.00000000000000011102230246251565404236316680908203125", "1.000000059604644775390625",
		"9007199254740993", "16777217", "4.9406564584124654e-324", "2.4703282292062327e-324", "1.401298464324817e-45",
	} {
		mant, exp, _ := strings.Cut(head, "e")
		if exp != "" {
			exp = "e" + exp
		}
		for _, tail := range []string{zeros(2000), zeros(2000) + "1", digits(2000), zeros(799) + "1" + zeros(1000),
			zeros(1500) + "1", "9" + zeros(1200)} {
			for _, e := range []string{"", "e308", "E+38", "e-1", "e-" + zeros(1500) + "3", "e" + zeros(1200) + "38", exp} {
				if e == "" && exp != "" {
					continue
				}
				lits = append(lits, mant+tail+e, "-"+mant+tail+e)
				if !strings.Contains(mant, ".") {
					lits = append(lits, mant+"."+tail+e)
				}
			}
		}
	}
	// strconv's decimal reading: no more than floatDigits digits before the point (so
	// "1"+900 zeros+"e-900" is 1e-101, and the first two here are taken), no exponent
	// past 10000 (the third is 0, taken).
	lits = append(lits, "1"+zeros(1373)+"1e-712", "1"+zeros(900)+"e-900", "0."+zeros(20000)+"1e100000",
		"1"+zeros(1373)+"1e-400", "0."+zeros(20000)+"1e20310", "-1"+zeros(801)+"e-493")
	for range 300 {
		lit := digits(1) + digits(r.IntN(1500))
		lit = strings.TrimLeft(lit, "0")
		if lit == "" {
			lit = "0"
		}
		if r.IntN(2) == 0 {
			lit = "0." + zeros(r.IntN(1500)) + digits(r.IntN(1500)+1)
		} else if r.IntN(2) == 0 {
			lit += "." + digits(r.IntN(1500)+1)
		}
		if r.IntN(2) == 0 {
			lit += "e" + []string{"", "+", "-"}[r.IntN(3)] + zeros(r.IntN(1500)) + strconv.Itoa(r.IntN(800))
		}
		lits = append(lits, lit)
	}
	for _, lit := range lits {
		if !json.Valid([]byte(lit)) {
			t.Fatalf("not a JSON number: %.60s…", lit)
		}
		short := shortFloatLiteral([]byte(lit))
		if len(lit) > maxFloatLiteral && len(short) > maxFloatLiteral {
			t.Errorf("%.60s…: %d bytes", lit, len(short))
		}
		// strconv reads no more than floatDigits digits before the point of a literal
		// out of range (shortFloatLiteral): the values of those that have more may differ.
		intDigits := len(strings.TrimPrefix(strings.FieldsFunc(lit, func(r rune) bool { return r == '.' || r == 'e' || r == 'E' })[0], "-"))
		for _, bits := range []int{32, 64} {
			want, wantErr := strconv.ParseFloat(lit, bits)
			got, err := strconv.ParseFloat(short, bits)
			if intDigits <= floatDigits && math.Float64bits(got) != math.Float64bits(want) || (err == nil) != (wantErr == nil) {
				t.Errorf("%.60s… (%d bytes) as %.60s…, float%d: %v %v, want %v %v", lit, len(lit), short, bits, got, err, want, wantErr)
			}
		}
	}
}
