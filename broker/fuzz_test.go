package broker_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Fuzz targets for the broker's decoders of outside input: model names from clients and
// job records read back from NATS (anything that may publish there wrote them).
// Run one with: go test -run '^$' -fuzz '^FuzzModelToken$' -fuzztime 30s ./broker

var tokenRE = regexp.MustCompile(`^[a-z2-7]+$`)

// FuzzModelToken checks that a model name is refused with ErrBadModel or gets a token
// that is safe in a subject and a consumer name and decodes to the normalized name.
func FuzzModelToken(f *testing.F) {
	for _, s := range []string{
		"llama3.2:3b", "hf.co/Org/Model-GGUF:Q4_K_M", "MODEL:Latest", "a.b*c>d", " x ", "",
		"   ", "with space:tag", "ünïcode/模型:1", "İstanbul", "a/b:c/d", "\xff\xfe", strings.Repeat("m", 150),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		norm := ollama.NormalizeModel(name)
		if again := ollama.NormalizeModel(norm); again != norm {
			t.Fatalf("NormalizeModel is not idempotent on %q: %q then %q", name, norm, again)
		}
		token, err := broker.ModelToken(name)
		if err != nil {
			if !errors.Is(err, broker.ErrBadModel) {
				t.Fatalf("ModelToken(%q): %v is not ErrBadModel", name, err)
			}
			return
		}
		if norm == "" {
			t.Fatalf("ModelToken accepted %q, which normalizes to nothing", name)
		}
		if !tokenRE.MatchString(token) {
			t.Fatalf("ModelToken(%q) = %q: not lower-case base32", name, token)
		}
		if len(broker.ConsumerName(token)) > 255 {
			t.Fatalf("consumer name for %q is %d bytes", name, len(broker.ConsumerName(token)))
		}
		back, err := broker.ModelFromToken(token)
		if err != nil || back != norm {
			t.Fatalf("ModelFromToken(ModelToken(%q)) = %q, %v; want %q", name, back, err, norm)
		}
		if !broker.TokenValid(token) || !broker.ModelOnToken(name, token) {
			t.Fatalf("ModelToken(%q) = %q is not valid, or not the model's", name, token)
		}
		if got, ok := broker.TokenFromSubject(broker.QueueSubject(token)); !ok || got != token {
			t.Fatalf("queue subject of %q does not give its token back", name)
		}
		// Names that differ only in case or in the default tag are one model.
		for _, same := range []string{strings.ToUpper(name), norm} {
			if tok2, err := broker.ModelToken(same); err == nil && ollama.NormalizeModel(same) == norm && tok2 != token {
				t.Fatalf("%q and %q normalize alike but get tokens %q and %q", name, same, token, tok2)
			}
		}
	})
}

// FuzzDecodeJob checks that any record DecodeJob accepts can be written back (every
// store update re-encodes the record it read) and that encoding is then a fixed point.
func FuzzDecodeJob(f *testing.F) {
	f.Add([]byte(`{"job_id":"01J00000000000000000000000","state":"queued","model":"tiny-a:latest","attempt":0,"at":"2026-01-02T03:04:05.123456789Z","kind":"chat","created_at":"2026-01-02T03:04:05Z"}`))
	f.Add([]byte(`{"job_id":"01J00000000000000000000000","state":"done","model":"m","attempt":2,"at":"2026-01-02T03:04:05+02:00","error":"x","kind":"generate","created_at":"0001-01-01T00:00:00Z","started_at":"2026-01-02T03:04:05Z","finished_at":null,"result":{"a":[1,2]},"artifacts":[{"name":"result.json","content_type":"application/json","size":12}],"sync":true,"webhook":{"url":"https://h/","events":["done"]},"body_ref":"r","cancel_requested":"bye"}`))
	f.Add([]byte(`{"state":"nope","attempt":-1,"result":"str"}`))
	f.Add([]byte(`{"at":"2026-01-02T03:04:05+23:59"}`))
	f.Add([]byte(`{"At":"0000-01-01T0:00:00+24:00"}`))
	f.Add([]byte(`{"at":"2026-01-02T03:04:05Z","finished_at":"2026-01-02T03:04:05-24:00"}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"result":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := broker.DecodeJob(data)
		if err != nil {
			return
		}
		// What consumers of a record call on it must not panic.
		_ = j.State.Terminal()
		_ = j.State.Valid()
		_ = j.Kind.Path()
		_ = j.Webhook.Wants(j.State)
		_, _ = j.Artifact("result.json")
		enc, err := json.Marshal(j)
		if err != nil {
			t.Fatalf("record %q decodes but cannot be written back: %v", data, err)
		}
		j2, err := broker.DecodeJob(enc)
		if err != nil {
			t.Fatalf("re-encoded record %q does not decode: %v", enc, err)
		}
		enc2, err := json.Marshal(j2)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("record does not survive a round trip:\n%s\n%s (%v)", enc, enc2, err)
		}
	})
}
