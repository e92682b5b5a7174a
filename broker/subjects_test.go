package broker_test

import (
	"encoding/base32"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

func TestModelTokenRoundTrip(t *testing.T) {
	t.Parallel()
	names := []string{
		"llama3.2:3b", "hf.co/Org/Model-GGUF:Q4_K_M", "MODEL:Latest", "a.b*c>d",
		"llama3", "with space:tag", "ünïcode/模型:1", "x",
	}
	seen := map[string]string{}
	for _, name := range names {
		tok, err := broker.ModelToken(name)
		if err != nil {
			t.Fatalf("ModelToken(%q): %v", name, err)
		}
		if strings.ContainsAny(tok, ".*> \t") || tok != strings.ToLower(tok) {
			t.Errorf("ModelToken(%q) = %q: unsafe character or upper case", name, tok)
		}
		back, err := broker.ModelFromToken(tok)
		if err != nil {
			t.Fatalf("ModelFromToken(%q): %v", tok, err)
		}
		if back != ollama.NormalizeModel(name) {
			t.Errorf("round trip %q → %q → %q, want %q", name, tok, back, ollama.NormalizeModel(name))
		}
		if prev, dup := seen[tok]; dup {
			t.Errorf("%q and %q share token %q", prev, name, tok)
		}
		seen[tok] = name
	}
}

func TestModelTokenCaseAndTagFold(t *testing.T) {
	t.Parallel()
	same := [][2]string{{"MODEL:Latest", "model:latest"}, {"llama3", "llama3:latest"}, {" Llama3 ", "llama3:latest"}}
	for _, p := range same {
		a, _ := broker.ModelToken(p[0])
		b, _ := broker.ModelToken(p[1])
		if a != b {
			t.Errorf("%q and %q should be one model: %q vs %q", p[0], p[1], a, b)
		}
	}
	a, _ := broker.ModelToken("llama3:8b")
	b, _ := broker.ModelToken("llama3:70b")
	if a == b {
		t.Error("different tags share a token")
	}
}

func TestModelTokenRejects(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"", "   ", strings.Repeat("m", 200)} {
		if _, err := broker.ModelToken(name); err == nil {
			t.Errorf("ModelToken(%q) accepted", name)
		}
	}
	if _, err := broker.ModelFromToken("not base32!"); err == nil {
		t.Error("ModelFromToken accepted garbage")
	}
}

func TestTransitions(t *testing.T) {
	t.Parallel()
	legal := [][2]broker.State{
		{broker.StateQueued, broker.StateLoading}, {broker.StateLoading, broker.StateWorking},
		{broker.StateWorking, broker.StateDone}, {broker.StateWorking, broker.StateRetrying},
		{broker.StateRetrying, broker.StateWorking}, {broker.StateQueued, broker.StateCanceled},
		{broker.StateWorking, broker.StateWorking},
	}
	for _, p := range legal {
		if !broker.CanTransition(p[0], p[1]) {
			t.Errorf("%s → %s should be legal", p[0], p[1])
		}
	}
	illegal := [][2]broker.State{
		{broker.StateDone, broker.StateWorking}, {broker.StateFailed, broker.StateQueued},
		{broker.StateCanceled, broker.StateDone}, {broker.StateWorking, broker.StateQueued},
		{broker.StateDone, broker.StateCanceled},
	}
	for _, p := range illegal {
		if broker.CanTransition(p[0], p[1]) {
			t.Errorf("%s → %s should be illegal", p[0], p[1])
		}
	}
}

func TestTokenValid(t *testing.T) {
	t.Parallel()
	tok, err := broker.ModelToken("Llama3")
	if err != nil || !broker.TokenValid(tok) {
		t.Fatalf("ModelToken(Llama3) = %q (%v) is not valid", tok, err)
	}
	for _, bad := range []string{"", "zzz1", strings.ToUpper(tok), tok + "a", "x.y"} {
		if broker.TokenValid(bad) {
			t.Errorf("TokenValid(%q) = true", bad)
		}
	}
	// A foreman before f24b732 normalized "library/llama3" to "library/llama3:latest",
	// this one to "llama3:latest": the earlier token is still the model's (ADR-0099).
	earlier := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString([]byte("library/llama3:latest")))
	now, _ := broker.ModelToken("llama3")
	if earlier == now || !broker.TokenValid(earlier) || !broker.ModelOnToken("library/llama3", earlier) ||
		!broker.ModelOnToken("llama3", earlier) || broker.ModelOnToken("llama3.2", earlier) {
		t.Errorf("the earlier token %q of library/llama3 is not read as that model's", earlier)
	}
	if m, err := broker.ModelFromToken(earlier); err != nil || m != "llama3:latest" {
		t.Errorf("ModelFromToken(earlier) = %q, %v; want today's name llama3:latest", m, err)
	}
	for _, bad := range []string{"Library/llama3:latest", " llama3:latest"} {
		if tok := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString([]byte(bad))); broker.TokenValid(tok) {
			t.Errorf("token of %q, which no foreman's normal form gives, is valid", bad)
		}
	}
}
