package gateway

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// stringUnits are pieces of JSON string values (as sent) that encoding/json decodes in
// every way it can: escapes, surrogate pairs, lone and reversed surrogates, invalid and
// cut UTF-8, white space and control characters of every kind, written and escaped (not
// \', which its unquote takes but its scanner refuses first).
var stringUnits = []string{"a", "Z", "0", " ", `\t`, `\n`, `\u0020`, "\u00a0", `\u00a0`, "\u3000", `\u2028`, "\u0085",
	`\u0085`, "\x7f", `\u007f`, "\u0080", `\u009f`, `\u0001`, `\b`, `\f`, `\r`, `\"`, `\\`, `\/`, "é", `\u00e9`, "😀",
	`\ud83d\ude00`, `\ud83d`, `\ude00`, `\ude00\ud83d`, `\ud83dx`, "\xff", "\xe2\x82", "\xc2", "\xf0\x9f\x98", `\uFFFD`, "\uFFFD",
	"json_object", "JSON_schema", "high", "ſ", "K"}

// randomJSONString is a JSON string value of n units.
func randomJSONString(r *rand.Rand, n int) string {
	var b strings.Builder
	b.WriteByte('"')
	for range n {
		b.WriteString(stringUnits[r.IntN(len(stringUnits))])
	}
	b.WriteByte('"')
	return b.String()
}

// jsonRunes reads a JSON string's characters as encoding/json decodes them.
func TestJSONRunes(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(7, 142))
	for range 20000 {
		raw := randomJSONString(r, r.IntN(12))
		var want string
		if err := json.Unmarshal([]byte(raw), &want); err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		var got []rune
		if !jsonRunes([]byte(raw), func(c rune) bool { got = append(got, c); return true }) {
			t.Errorf("%q: not read, encoding/json decodes %q", raw, want)
			continue
		}
		if string(got) != want {
			t.Errorf("%q: read %q, encoding/json decodes %q", raw, string(got), want)
		}
	}
}

// A model string too long to name any model is not decoded whole: what stands in for it
// is answered by every check of a model name as the whole is, and quoted as it is.
func TestModelStringStandsIn(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(8, 142))
	checks := func(s string) string {
		var words []string
		if err := checkModelName(s); err != nil {
			words = append(words, err.Error())
		}
		return fmt.Sprint(words, s == "", strings.TrimSpace(s) == "", ollama.ValidModelName(s), clipInput(s),
			(&ModelNotFoundError{Model: s}).messageFor("/api/generate"))
	}
	tested := 0
	for i := range 600 {
		var raw string
		switch i % 6 {
		case 0: // white space only
			raw = `"` + strings.Repeat([]string{" ", `\t`, "\u3000", `\u0020`}[r.IntN(4)], maxModelString) + `"`
		case 1: // white space around
			raw = `"` + strings.Repeat(" ", r.IntN(300)) + strings.Repeat("a", maxModelString) + strings.Repeat(`\n`, r.IntN(3)) + `"`
		default:
			raw = randomJSONString(r, maxModelString/3+r.IntN(maxModelString/4))
		}
		var whole string
		if json.Unmarshal([]byte(raw), &whole) != nil {
			continue
		}
		if len(raw) <= maxModelString {
			continue
		}
		tested++
		stand, ok := modelString([]byte(raw))
		if !ok {
			t.Fatalf("%.60q: not read", raw)
		}
		if got, want := checks(stand), checks(whole); got != want {
			t.Errorf("%.60q…: %.300s, the whole value %.300s", raw, got, want)
		}
	}
	if tested < 300 {
		t.Fatalf("%d values tested", tested)
	}
}

// A response_format type or a text format type, a reasoning effort, of a body's size is
// read as a whole decode reads it, and not decoded whole.
func TestWordsReadAsDecoded(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(9, 142))
	chatFormat := func(raw string) string { // as openAIChatFormat read it, decoding the type whole
		var rf struct {
			Type string `json:"type"`
		}
		if json.Unmarshal([]byte(raw), &rf) != nil {
			return "refused"
		}
		return strings.ToLower(strings.TrimSpace(rf.Type))
	}
	for i := range 3000 {
		pad := func() string {
			var b strings.Builder
			for range r.IntN(3) * (maxDecodedString / 2) {
				b.WriteString([]string{" ", `\t`, "\u3000", `\u0020`, `\n`, "\u0085"}[r.IntN(6)])
			}
			return b.String()
		}
		word := []string{"json_object", "JSON_SCHEMA", "json_obj", "json_objectx", "json object", "ſ", randomJSONString(r, 5)}[r.IntN(7)]
		word = strings.Trim(word, `"`)
		value := `"` + pad() + word + pad() + `"`
		if i%5 == 0 {
			value = randomJSONString(r, r.IntN(2*maxDecodedString))
		}
		raw := `{"type":` + value + `,"json_schema":{"schema":{"type":"object"}}}`
		var w struct {
			Type trimmedWord `json:"type"`
		}
		got := "refused"
		if json.Unmarshal([]byte(raw), &w) == nil {
			got = strings.ToLower(strings.TrimSpace(string(w.Type)))
		}
		want := chatFormat(raw)
		if (got == "json_object" || got == "json_schema" || want == "json_object" || want == "json_schema") && got != want {
			t.Errorf("type %.80q (%d bytes): read %q, decoded whole %q", value, len(value), got, want)
		}
		if string(openAIChatFormat(json.RawMessage(raw))) != map[string]string{"json_object": `"json"`, "json_schema": `{"type":"object"}`}[want] {
			t.Errorf("type %.80q (%d bytes): format %s, want the format of %q", value, len(value), openAIChatFormat(json.RawMessage(raw)), want)
		}
	}
}

// The parse of a body whose model, reasoning effort or format type is a string of its
// size costs no more than the body: decoded whole, each invalid UTF-8 byte of it became
// three, and encoding/json's buffer grew by doubling (ten times the body), in the sync
// routes' parse and at POST /jobs. The answers are the whole value's.
func TestLongStringMembersCostLittle(t *testing.T) {
	n := 1 << 20 // a MiB: any size past maxModelString costs in proportion
	for _, value := range []string{`"` + strings.Repeat("\xff", n) + `"`, `"` + strings.Repeat(`\u00e9`, n/6) + `"`,
		`"` + strings.Repeat(" ", n/2) + "json_object" + strings.Repeat(`\t`, n/4) + `"`} {
		for _, c := range []struct {
			kind broker.Kind
			body string
		}{
			{broker.KindChat, `{"model":` + value + `,` + hiMessages + `}`},
			{broker.KindGenerate, `{"model":` + value + `,"prompt":"hi"}`},
			{broker.KindOpenAIChat, `{"model":` + value + `,` + hiMessages + `}`},
			{broker.KindAnthropicMessages, `{"model":` + value + `,"max_tokens":4,` + hiMessages + `}`},
			{broker.KindOpenAIEmbeddings, `{"model":` + value + `,"input":"hi"}`},
			{broker.KindOpenAIChat, `{"model":"tiny-a",` + hiMessages + `,"reasoning_effort":` + value + `}`},
			{broker.KindOpenAIChat, `{"model":"tiny-a",` + hiMessages + `,"reasoning":{"effort":` + value + `}}`},
			{broker.KindOpenAIChat, `{"model":"tiny-a",` + hiMessages + `,"response_format":{"type":` + value + `}}`},
			{broker.KindOpenAIResponses, `{"model":"tiny-a","input":"hi","text":{"format":{"type":` + value + `}}}`},
		} {
			body := []byte(c.body)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			err := compatParse(c.kind, body)
			runtime.ReadMemStats(&after)
			if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 2*uint64(len(body)) {
				t.Errorf("%s %.60s…: the parse allocated %d bytes, %.1f times the body (%v)", c.kind, c.body, allocated,
					float64(allocated)/float64(len(body)), err)
			}
			// POST /jobs decodes the model too.
			job := []byte(`{"kind":"` + string(c.kind) + `",` + c.body[1:])
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, jerr := parseSubmission(job, &webhook.Policy{})
			runtime.ReadMemStats(&after)
			if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 3*uint64(len(job)) {
				t.Errorf("POST /jobs %.60s…: the submission's checks allocated %d bytes, %.1f times the body (%.200v)", job,
					allocated, float64(allocated)/float64(len(job)), jerr)
			}
		}
	}
}

// A submission's own string members (its kind, priority, program, webhook events) of a
// body's size are not decoded whole either (ten times the body each), and are refused in
// the words the whole value gets: quoted clipped, or measured.
func TestSubmissionLongStringsCostLittle(t *testing.T) {
	n := 1 << 20
	for _, unit := range []string{"\xff", `\u00e9`, "é"} {
		value := `"` + strings.Repeat(unit, n/len(unit)) + `"`
		var whole string
		if err := json.Unmarshal([]byte(value), &whole); err != nil {
			t.Fatal(err)
		}
		names := make([]string, len(broker.Kinds))
		for i, k := range broker.Kinds {
			names[i] = string(k)
		}
		for _, c := range []struct{ body, want string }{
			{`{"kind":` + value + `,"model":"tiny-a","prompt":"hi"}`,
				fmt.Sprintf("unknown kind %q (%s)", clipInput(whole), strings.Join(names, ", "))},
			{`{"kind":"generate","model":"tiny-a","prompt":"hi","priority":` + value + `}`,
				fmt.Sprintf(`"priority": priority of %d bytes: must be high, normal or low`, len(whole))},
			{`{"kind":"generate","model":"tiny-a","prompt":"hi","program":` + value + `}`,
				fmt.Sprintf(`"program": %d bytes: must be 1 to 64 of A-Z a-z 0-9 . _ -`, len(whole))},
			// A webhook URL: its parse cost 28 times the body.
			{`{"kind":"generate","model":"tiny-a","prompt":"hi","state_webhook_url":"https://example.com/` + value[1:] + `}`,
				"state_webhook_url: longer than 2048 bytes"},
			{`{"kind":"generate","model":"tiny-a","prompt":"hi","state_webhook_url":"https://example.com/h","webhook_events":["done",` + value + `]}`,
				fmt.Sprintf("webhook_events: unknown state %q (queued, loading, working, retrying, done, failed, canceled)", clipInput(whole))},
		} {
			body := []byte(c.body)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, err := parseSubmission(body, &webhook.Policy{LookupNetIP: refuseLookup})
			runtime.ReadMemStats(&after)
			if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 2*uint64(len(body)) {
				t.Errorf("%.60s…: the submission's checks allocated %d bytes, %.1f times the body", c.body, allocated,
					float64(allocated)/float64(len(body)))
			}
			if err == nil || err.Error() != c.want {
				t.Errorf("%.60s…: refused %.300v, want %.300s", c.body, err, c.want)
			}
		}
	}
}
