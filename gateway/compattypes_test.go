package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ollama/ollama/anthropic"
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
		{broker.KindOpenAIChat, chat, `{"model":5,"messages":"hi"}`, false},
		{broker.KindOpenAIChat, chat, `{"model":"tiny-a","messages":[],"max_tokens":"x"}`, true},
		{broker.KindOpenAIChat, chat, `{"model":"tiny-a","top_logprobs":99,"seed":1.5,` + hiMessages + `}`, true},
		{broker.KindOpenAIResponses, responses, `{"model":"tiny-a","tools":"x","input":5}`, true},
		{broker.KindOpenAIResponses, responses, `{"model":5,"input":{}}`, true},
		{broker.KindOpenAIResponses, responses, `{"model":"tiny-a","input":"hi","input":5}`, true},
		{broker.KindAnthropicMessages, reflect.TypeFor[anthropic.MessagesRequest](), `{"model":"","max_tokens":"x",` + hiMessages + `}`, true},
		{broker.KindOpenAIEmbeddings, reflect.TypeFor[openai.EmbedRequest](), `{"model":"tiny-a","input":[],"encoding_format":5}`, true},
	} {
		err := compatParse(c.kind, []byte(c.body))
		ollamaErr := compatDecode(c.typ, []byte(c.body))
		switch {
		case err == nil:
			t.Errorf("%s %s: not refused; Ollama's decoder says %v", c.kind, c.body, ollamaErr)
		case ollamaErr == nil:
			t.Errorf("%s %s: refused %q, but Ollama's decoder takes it", c.kind, c.body, err)
		case c.exact && err.Error() != ollamaErr.Error():
			t.Errorf("%s %s: refused %q, Ollama's decoder says %q", c.kind, c.body, err, ollamaErr)
		}
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
