package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/ollama/ollama/openai"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Fuzz targets for the gateway's decoders of client input. Each checks what an accepted
// input promises to the rest of foreman, and that every rejection is a 4xx with a message.
// Run one with: go test -run '^$' -fuzz '^FuzzParseSubmission$' -fuzztime 30s ./gateway

// wantClientError fails unless err maps (through statusOf, the one mapping) to a 4xx
// with a message for the client.
func wantClientError(t *testing.T, what string, err error) {
	t.Helper()
	status, msg := statusOf(err)
	if status < 400 || status > 499 || msg == "" {
		t.Fatalf("%s: error %v maps to %d %q, want a 4xx with a message", what, err, status, msg)
	}
}

var tokenAlphabet = regexp.MustCompile(`^[a-z2-7]+$`)

// wantQueueable fails unless model either has a queue token that decodes back to its
// normalized name, or is refused with ErrBadModel (a 400), as Store.Submit refuses it.
func wantQueueable(t *testing.T, model string) {
	t.Helper()
	token, err := broker.ModelToken(model)
	if err != nil {
		if !errors.Is(err, broker.ErrBadModel) {
			t.Fatalf("ModelToken(%q): %v is not ErrBadModel", model, err)
		}
		wantClientError(t, "ModelToken", err)
		return
	}
	if !tokenAlphabet.MatchString(token) {
		t.Fatalf("ModelToken(%q) = %q: not lower-case base32", model, token)
	}
	back, err := broker.ModelFromToken(token)
	if err != nil || back != ollama.NormalizeModel(model) {
		t.Fatalf("ModelFromToken(ModelToken(%q)) = %q, %v; want %q", model, back, err, ollama.NormalizeModel(model))
	}
}

var queuedKinds = []broker.Kind{broker.KindChat, broker.KindGenerate, broker.KindOpenAIChat, broker.KindOpenAICompletion}

// fuzzCompatTypes are the request types of Ollama's OpenAI layer for the OpenAI kinds
// among queuedKinds.
var fuzzCompatTypes = map[broker.Kind]reflect.Type{
	broker.KindOpenAIChat:       reflect.TypeFor[openai.ChatCompletionRequest](),
	broker.KindOpenAICompletion: reflect.TypeFor[openai.CompletionRequest](),
}

// FuzzParseInference fuzzes the body parser of /api/chat, /api/generate,
// /v1/chat/completions and /v1/completions.
func FuzzParseInference(f *testing.F) {
	f.Add(uint8(0), []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`))
	f.Add(uint8(1), []byte(`{"model":"Tiny-A:Latest","prompt":"hi","stream":false}`))
	f.Add(uint8(2), []byte(`{"model":"tiny-a","stream":true,"messages":[]}`))
	f.Add(uint8(3), []byte(`{"name":"tiny-a","prompt":"hi","stream":null}`))
	f.Add(uint8(0), []byte(`{"model":"  ","messages":[]}`))
	f.Add(uint8(0), []byte(`{"model":"a","stream":"yes"}`))
	f.Add(uint8(1), []byte(`[{"model":"a"}]`))
	f.Add(uint8(1), []byte(`null`))
	f.Add(uint8(0), []byte(`{"model":"a","options":{"num_ctx":256},"OPTIONS":{"num_gpu":1}}`))
	f.Add(uint8(0), []byte(`{"model":"a","options":{"num_ctx":256},"options":null}`))
	f.Add(uint8(2), []byte(`{"model":"a","options":"big","options":{"num_ctx":256}}`))
	f.Add(uint8(1), []byte(`{"model":"a","prompt":"x","top_logprobs":21,"top_logprobs":null}`))
	f.Add(uint8(0), []byte(`{"model":"a","tools":"x","think":"weird","keep_alive":[1],"messages":"hi"}`))
	f.Add(uint8(1), []byte(`{"model":"a","prompt":"x","images":"x","context":{},"raw":"yes","width":1.5,"keep_alive":"5x"}`))
	f.Add(uint8(0), []byte(`{"model":"a","TOOLS":[],"think":"high","keep_alive":-1,"truncate":null,"logprobs":true}`))
	f.Add(uint8(2), []byte(`{"model":"a","messages":"hi","max_tokens":"x","temperature":1e400,"stream_options":5,"stream":"x"}`))
	f.Add(uint8(3), []byte(`{"model":5,"prompt":"x","frequency_penalty":1e39,"logprobs":true,"seed":1.5,"Suffix":[]}`))
	f.Fuzz(func(t *testing.T, k uint8, body []byte) {
		kind := queuedKinds[int(k)%len(queuedKinds)]
		in, err := parseInference(kind, body)
		model, stream := in.model, in.stream
		if err != nil {
			wantClientError(t, "parseInference", err)
			// A native body refused for a member's type is one Ollama's decoder refuses; an
			// OpenAI body, one its OpenAI layer's decoder refuses.
			if (kind == broker.KindChat || kind == broker.KindGenerate) && typeRefusal(err) && ollamaDecode(kind, body) == nil {
				t.Fatalf("%s %q: refused %q, but Ollama's decoder takes it", kind, body, err)
			}
			if typ, ok := fuzzCompatTypes[kind]; ok && compatTypeRefused(err) && compatDecode(typ, body) == nil {
				t.Fatalf("%s %q: refused %q, but Ollama's OpenAI layer's decoder takes it", kind, body, err)
			}
			return
		}
		if strings.TrimSpace(model) == "" {
			t.Fatalf("accepted %q with an empty model", body)
		}
		// What is queued and sent on is what Ollama reads of the body: the body, or the
		// object it begins with (leadingObject).
		if !bytes.HasPrefix(body, in.body) {
			t.Fatalf("accepted %q as %q, which does not begin it", body, in.body)
		}
		body = in.body
		if err := validJSONObject(body); err != nil {
			t.Fatalf("accepted %q, which is not a JSON object: %v", body, err)
		}
		// The model foreman queues is the one the target reads from the same body: Ollama
		// decodes these routes' bodies into a struct with a "model" field (no "name").
		var target struct {
			Model string `json:"model"`
		}
		if err := json.Unmarshal(body, &target); err != nil || target.Model != model {
			t.Fatalf("model %q, but the target would read %q (%v)", model, target.Model, err)
		}
		var req struct {
			Stream *bool `json:"stream"`
		}
		if err := json.Unmarshal(body, &req); err != nil {
			t.Fatalf("accepted %q, but its stream field does not decode: %v", body, err)
		}
		want := req.Stream != nil && *req.Stream
		if kind == broker.KindChat || kind == broker.KindGenerate {
			want = req.Stream == nil || *req.Stream
		}
		if stream != want {
			t.Fatalf("%s %q: stream = %v, want %v", kind, body, stream, want)
		}
		wantQueueable(t, model)
	})
}

// foremanFields are the POST /jobs members that never reach the target.
var foremanFields = map[string]bool{fieldKind: true, fieldWebhookURL: true, fieldEvents: true, fieldPriority: true, fieldProgram: true}

// FuzzParseSubmission fuzzes the POST /jobs body parser, which foreman.jobs.submit shares
// (Server.submitJob runs it first on the raw request data of both). It only parses: a
// state_webhook_url is checked (CheckURL, no DNS) and never contacted.
func FuzzParseSubmission(f *testing.F) {
	f.Add([]byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`))
	f.Add([]byte(`{"kind":"generate","model":"tiny-a","prompt":"hi","state_webhook_url":"https://hooks.example/h","webhook_events":["done","failed"]}`))
	f.Add([]byte(`{"kind":"embed","model":"tiny-embed","input":["a","b"]}`))
	f.Add([]byte(`{"kind":"openai_chat","model":"tiny-a","messages":"no"}`))
	f.Add([]byte(`{"kind":"chat","model":"a","Model":"b","MODEL":"c"}`))
	f.Add([]byte(`{"model":"a","webhook_events":["done"]}`))
	f.Add([]byte(`{"model":"a","state_webhook_url":"ftp://x/"}`))
	f.Add([]byte(`{"ki\u006ed":"generate","model":"a","prompt":1} `))
	f.Add([]byte(`{"model":"a"}{}`))
	f.Add([]byte(`{"model":"a","priority":"low","program":"batch-1"}`))
	f.Add([]byte(`{"model":"a","priority":"urgent","program":"a b"}`))
	f.Add([]byte(`{"model":"a","priority":null,"program":null,"Priority":"x"}`))
	f.Add([]byte(`{"model":"a","priority":"high","priority":"low"}`))
	f.Add([]byte(`{"model":"a","Options":{"num_ctx":256},"options":{"use_mmap":false}}`))
	f.Add([]byte(`{"model":"a","options":{"num_ctx":256},"options":[1]}`))
	f.Add([]byte(`{"model":"a","MODEL":null,"options":null}`))
	f.Add([]byte(`{"model":"a","priority":"high","priority":null,"program":"x","program":null}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		sub, err := parseSubmission(raw, &webhook.Policy{LookupNetIP: refuseLookup})
		if err != nil {
			wantClientError(t, "parseSubmission", err)
			return
		}
		if !sub.kind.Valid() {
			t.Fatalf("accepted kind %q", sub.kind)
		}
		if strings.TrimSpace(sub.model) == "" {
			t.Fatalf("accepted %q with an empty model", raw)
		}
		wantQueueable(t, sub.model)
		// A priority and a program are valid or absent.
		if sub.priority != "" {
			if p, err := broker.ParsePriority(string(sub.priority)); err != nil || p != sub.priority {
				t.Fatalf("accepted priority %q: %v", sub.priority, err)
			}
		}
		if sub.program != "" {
			if err := broker.ValidateProgram(sub.program); err != nil {
				t.Fatalf("accepted program %q: %v", sub.program, err)
			}
		}
		// The body sent on is the request's own members, byte for byte, minus foreman's.
		in, err := objectMembers(raw)
		if err != nil {
			t.Fatalf("accepted %q, which does not split into members: %v", raw, err)
		}
		out, err := objectMembers(sub.body)
		if err != nil {
			t.Fatalf("body %q sent on does not re-decode: %v", sub.body, err)
		}
		var kept []member
		said := map[string]string{} // the last "priority" and "program" the body gave
		for _, m := range in {
			if !foremanFields[m.key] {
				kept = append(kept, m)
			}
			var v *string
			if (m.key == fieldPriority || m.key == fieldProgram) && json.Unmarshal(m.value, &v) == nil {
				if v == nil {
					delete(said, m.key)
				} else {
					said[m.key] = *v
				}
			}
		}
		if string(sub.priority) != said[fieldPriority] || sub.program != said[fieldProgram] {
			t.Fatalf("parsed priority %q program %q, but the body says %q", sub.priority, sub.program, said)
		}
		if len(kept) != len(out) {
			t.Fatalf("body sent on has %d members, want %d: %q from %q", len(out), len(kept), sub.body, raw)
		}
		fields := map[string]json.RawMessage{}
		for i, m := range out {
			if m.key != kept[i].key || !bytes.Equal(m.value, kept[i].value) {
				t.Fatalf("member %d sent on is %s:%s, want %s:%s", i, m.key, m.value, kept[i].key, kept[i].value)
			}
			fields[m.key] = m.value
		}
		// The target reads the same model foreman queued under.
		var named struct {
			Model string `json:"model"`
		}
		if err := json.Unmarshal(sub.body, &named); err != nil || named.Model != sub.model {
			t.Fatalf("queued as %q, but the target reads %q (%v) from %q", sub.model, named.Model, err, sub.body)
		}
		if want := broker.LoadOptionsToken(sub.body); sub.inf.opts != want {
			t.Fatalf("%q: load options %q, want %q", raw, sub.inf.opts, want)
		}
		if err := checkKindFields(sub.kind, fields); err != nil {
			t.Fatalf("body sent on fails its kind's check: %v", err)
		}
		if sub.webhook != nil {
			if err := webhookURLChecks["default policy"](sub.webhook.URL); err != nil {
				t.Fatalf("accepted webhook %q that the default policy refuses: %v", sub.webhook.URL, err)
			}
			for _, e := range sub.webhook.Events {
				if !e.Valid() {
					t.Fatalf("accepted webhook event %q", e)
				}
			}
		}
	})
}

// webhookURLChecks are the checks a job's webhook URL passes before the job is accepted.
// FuzzWebhookURL holds every URL one of them accepts to wantDeliverableURL.
var webhookURLChecks = map[string]func(string) error{
	"default policy": func(raw string) error { return checkWebhookURL(raw, &webhook.Policy{LookupNetIP: refuseLookup}) },
	"deny private": func(raw string) error {
		return checkWebhookURL(raw, &webhook.Policy{DenyPrivate: true, LookupNetIP: refuseLookup})
	},
	"allow loopback": func(raw string) error {
		return checkWebhookURL(raw, &webhook.Policy{AllowNets: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}, LookupNetIP: refuseLookup})
	},
}

// refuseLookup is the resolver of the fuzzed policies: the submit-time checks read the
// URL only, so a lookup of a fuzzed host (which may name any address) is a bug, and
// panics before anything could be sent there.
func refuseLookup(_ context.Context, _, host string) ([]netip.Addr, error) {
	panic("webhook URL check resolved " + host + ": submit-time checks must not")
}

// refusedByDefault reports whether the default webhook policy must refuse a URL whose
// host is this literal address (ADR-0021).
func refusedByDefault(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsMulticast() || a.IsUnspecified()
}

// atonOracle reads host as inet_aton(3) does (1 to 4 parts; decimal, 0-octal or 0x-hex;
// the last part fills the remaining bytes), written apart from the policy's own reader.
func atonOracle(host string) (netip.Addr, error) {
	parts := strings.Split(host, ".")
	if len(parts) == 0 || len(parts) > 4 {
		return netip.Addr{}, errors.New("not 1-4 parts")
	}
	vals := make([]uint64, len(parts))
	for i, p := range parts {
		digits, base := p, uint64(10)
		if strings.HasPrefix(strings.ToLower(p), "0x") {
			digits, base = p[2:], 16
		} else if len(p) > 1 && p[0] == '0' {
			digits, base = p[1:], 8
		}
		if digits == "" && base != 16 {
			return netip.Addr{}, errors.New("empty part")
		}
		var v uint64
		for _, c := range strings.ToLower(digits) {
			d := strings.IndexRune("0123456789abcdef", c)
			if d < 0 || uint64(d) >= base {
				return netip.Addr{}, errors.New("not a digit")
			}
			if v = v*base + uint64(d); v > 0xffffffff {
				return netip.Addr{}, errors.New("too large")
			}
		}
		vals[i] = v
	}
	var b [4]byte
	for i, v := range vals[:len(vals)-1] {
		if v > 0xff {
			return netip.Addr{}, errors.New("part too large")
		}
		b[i] = byte(v)
	}
	last, room := vals[len(vals)-1], 5-len(vals) // bytes the last part fills
	if last >= 1<<(8*room) {
		return netip.Addr{}, errors.New("last part too large")
	}
	for i := 3; i >= 4-room; i-- {
		b[i] = byte(last)
		last >>= 8
	}
	return netip.AddrFrom4(b), nil
}

// FuzzWebhookURL fuzzes the webhook URL checks: an accepted URL is an absolute http(s)
// URL with a host, short enough, that the deliverer can build a request from. The checks
// and http.NewRequest only read the URL: no input, whatever address it names, is resolved
// or contacted (169.254.169.254 and 10.x below are inputs to refuse or accept).
func FuzzWebhookURL(f *testing.F) {
	for _, s := range []string{
		"https://hooks.example/hook", "http://127.0.0.1:9/h?x=1", "HTTP://Hooks.EXAMPLE", "http://[::1]:80/",
		"ftp://hooks.example/", "http:///path", "http://:80/", "/relative", "https://user:pass@host/",
		"http://host:port/", "http://[fe80::1%25eth0]/", "https:hooks.example", "http://a b/",
		"https://" + strings.Repeat("a", 2050),
		"http://169.254.169.254/latest/meta-data/", "http://[::ffff:127.0.0.1]:11434/api/generate",
		"http://0.0.0.0:11434/", "http://[fe80::1]/", "http://224.0.0.1/", "http://10.0.0.8/h", "http://localhost./h",
		// Numeric spellings resolvers read as IPv4 (inet_aton).
		"http://2130706433/", "http://0177.0.0.1/", "http://0x7f.1/", "http://127.1/", "http://0xa9fea9fe/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		for name, check := range webhookURLChecks {
			if err := check(raw); err != nil {
				wantClientError(t, name, err)
				continue
			}
			wantDeliverableURL(t, name, raw)
			if name == "allow loopback" {
				continue
			}
			u, _ := url.Parse(raw)
			host := strings.TrimSuffix(u.Hostname(), ".")
			a, err := netip.ParseAddr(strings.Trim(host, "[]"))
			if err != nil {
				a, err = atonOracle(host)
			}
			if err == nil && refusedByDefault(a) {
				t.Fatalf("%s accepted %q, a loopback, link-local, multicast or unspecified address", name, raw)
			}
		}
	})
}

func wantDeliverableURL(t *testing.T, check, raw string) {
	t.Helper()
	if len(raw) > 2048 {
		t.Fatalf("%s accepted a %d-byte URL", check, len(raw))
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("%s accepted %q, which does not parse: %v", check, raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Hostname() == "" || u.Opaque != "" {
		t.Fatalf("%s accepted %q: scheme %q host %q opaque %q", check, raw, u.Scheme, u.Host, u.Opaque)
	}
	if _, err := http.NewRequest(http.MethodPost, raw, nil); err != nil {
		t.Fatalf("%s accepted %q, but no request can be built for it: %v", check, raw, err)
	}
}
