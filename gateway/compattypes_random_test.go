package gateway

import (
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ollama/ollama/api"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// randomValues are the values randomBody sets members to: every JSON kind, and the
// numbers and strings at the edges of what Ollama's fields take.
var randomValues = append(slices.Clone(compatValues), `-0`, `-0.0`, `0e0`, `1e2`, `1E+2`, `1.0e0`, `-1e-400`, `1E400`,
	`9223372036854775807`, `-9223372036854775808`, `-9223372036854775809`, `2147483647`, `2147483648`, `-2147483649`,
	`3.4028235e38`, `3.4028236e38`, `-3.4028235677973366e38`, `1.7976931348623157e308`, `1.7976931348623159e308`,
	`1e-45`, `123456789012345678901234567890`, `0.`+strings.Repeat("0", 300)+`1`, strings.Repeat("9", 320),
	`"\ud800"`, `"\udc00x"`, `"\ud83d\ude00"`, "\"\xff\"", `"json_object"`, `{"type":"json_object"}`, `{"effort":"high"}`,
	`"high"`, `[{"role":"user","content":"hi"}]`, `[1]`, `[null]`, `{"include_usage":true}`, `"float"`, `"base64"`,
	` 5 `, "\t[]\n", ` "x" `)

// randomKey is member's name as a client might spell it, matched all the same by
// encoding/json (case-insensitively, by Unicode's simple folding): mixed case, a
// Kelvin sign for a k, a long s for an s, escapes.
func randomKey(r *rand.Rand, member string) string {
	if r.IntN(2) == 0 {
		return strconv.Quote(member)
	}
	var b strings.Builder
	for _, c := range member {
		switch n := r.IntN(8); {
		case (c == 'k' || c == 'K') && n == 0:
			b.WriteString("\u212a")
		case (c == 's' || c == 'S') && n == 0:
			b.WriteString("\u017f")
		case n == 1:
			fmt.Fprintf(&b, `\u%04x`, c)
		case n < 4 && c >= 'a' && c <= 'z':
			b.WriteRune(c - 'a' + 'A')
		default:
			b.WriteRune(c)
		}
	}
	return `"` + b.String() + `"`
}

// randomBody is a body of typ's route: its base members, and members of typ (and a few
// of other types) set to random values, some sent twice, some followed by a null.
func randomBody(r *rand.Rand, typ reflect.Type, base []string) (body string, pairs [][2]string) {
	members := append(jsonMembers(typ), "unknown", "options", "think", "keep_alive", "stream", "logprobs", "max_tokens", "top_k")
	for _, m := range base {
		name, value, _ := strings.Cut(m, ":")
		pairs = append(pairs, [2]string{name, value})
	}
	for range 1 + r.IntN(4) {
		member := members[r.IntN(len(members))]
		value := randomValues[r.IntN(len(randomValues))]
		pairs = append(pairs, [2]string{randomKey(r, member), value})
		switch r.IntN(6) {
		case 0:
			pairs = append(pairs, [2]string{randomKey(r, member), "null"})
		case 1:
			pairs = append(pairs, [2]string{randomKey(r, member), randomValues[r.IntN(len(randomValues))]})
		}
	}
	r.Shuffle(len(pairs), func(i, j int) { pairs[i], pairs[j] = pairs[j], pairs[i] })
	parts := make([]string, len(pairs))
	for i, p := range pairs {
		parts[i] = p[0] + ":" + p[1]
	}
	return "{" + strings.Join(parts, ",") + "}", pairs
}

// memberOf is the member of typ a key names as encoding/json matches it: its exact name,
// else one equal under Unicode's simple folding; "" for none.
func memberOf(typ reflect.Type, key string) string {
	name, err := strconv.Unquote(key)
	if err != nil {
		var s string
		if jsonString([]byte(key)); true {
			s, _ = jsonString([]byte(key))
		}
		name = s
	}
	members := jsonMembers(typ)
	if slices.Contains(members, name) {
		return name
	}
	for _, m := range members {
		if strings.EqualFold(m, name) {
			return m
		}
	}
	return ""
}

// Random bodies on every route whose members foreman checks against Ollama's request
// types, decoded as Ollama's layer decodes them: foreman never refuses for a member's type
// a body the decoder takes, and where the body's one fault is one member's value (sent
// once or more), it refuses it in the decoder's words. FOREMAN_RANDOM_BODIES sets how
// many bodies each route gets.
func TestMemberTypesRandomBodiesAsOllamaDecodes(t *testing.T) {
	t.Parallel()
	n := 2000
	if s := os.Getenv("FOREMAN_RANDOM_BODIES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	targets := slices.Clone(compatTypes[:5])
	targets = append(targets,
		compatTypes[0], // placeholder, replaced below
		compatTypes[0])
	targets[5].kind, targets[5].typ, targets[5].base = broker.KindChat, reflect.TypeFor[api.ChatRequest](), []string{`"model":"tiny-a"`, hiMessages}
	targets[6].kind, targets[6].typ, targets[6].base = broker.KindGenerate, reflect.TypeFor[api.GenerateRequest](), []string{`"model":"tiny-a"`, `"prompt":"hi"`}
	r := rand.New(rand.NewPCG(142, 2026))
	counts := map[string]int{}
	for _, c := range targets {
		for range n {
			body, pairs := randomBody(r, c.typ, c.base)
			err := compatParse(c.kind, []byte(body))
			ollamaErr := compatDecode(c.typ, []byte(body))
			refused := compatTypeRefused(err) || typeRefusal(err)
			counts["bodies"]++
			if ollamaErr != nil {
				counts["ollama refuses"]++
			}
			if refused {
				counts["foreman refuses for a type"]++
				if ollamaErr == nil {
					t.Errorf("%s %s: refused %q, but Ollama's decoder takes it", c.kind, body, err)
					continue
				}
			}
			// The members at fault, each judged alone; a fault inside a value (a nested
			// one) foreman does not read for.
			faulty, nested := map[string]bool{}, false
			for _, p := range pairs {
				member := memberOf(c.typ, p[0])
				if member == "" {
					continue
				}
				if p[1] == "null" {
					continue
				}
				alone := compatDecode(c.typ, []byte("{"+strconv.Quote(member)+":"+p[1]+"}"))
				switch {
				case alone == nil:
				case compatTopLevelFault(c.typ, alone, member) || topLevelFault(c.kind, alone, member) && (c.kind == broker.KindChat || c.kind == broker.KindGenerate):
					faulty[member] = true
				default:
					nested = true
				}
			}
			if len(faulty) != 1 || nested || ollamaErr == nil {
				continue
			}
			counts["one member at fault"]++
			if !refused || err.Error() != clipNumberWords(ollamaErr) {
				t.Errorf("%s %s: refused %v, Ollama's decoder says %q", c.kind, body, err, ollamaErr)
				continue
			}
			counts["refused in the decoder's words"]++
		}
	}
	t.Logf("%v", counts)
	if counts["refused in the decoder's words"] == 0 {
		t.Fatal("nothing refused: the bodies prove nothing")
	}
}
