package ollamatest

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// RealOllamaEnv names the variable that points end-to-end tests at a real Ollama (the
// kit in shared/realollama: tiny-a, tiny-b, tiny-embed).
const RealOllamaEnv = "FOREMAN_TEST_OLLAMA_URL"

// RealOllama returns the URL of the real Ollama named by FOREMAN_TEST_OLLAMA_URL and
// skips t when it is unset. Tests of every package share that one Ollama, and what they
// check — model loads counted in its log, answers compared with its own — holds only
// while nobody else uses it, so t has it to itself until it ends: an exclusive lock on a
// file beside the system temp dir, waited for if another test holds it.
func RealOllama(t testing.TB) string {
	t.Helper()
	raw := os.Getenv(RealOllamaEnv)
	if raw == "" {
		t.Skipf("%s is unset: start a real Ollama with ../shared/realollama/start.sh and set it to the URL it prints", RealOllamaEnv)
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		t.Fatalf("%s=%q: not a URL", RealOllamaEnv, raw)
	}
	name := "foreman-realollama-" + strings.NewReplacer(":", "-", "[", "", "]", "").Replace(u.Host) + ".lock"
	unlock, err := lockFile(filepath.Join(os.TempDir(), name))
	if err != nil {
		t.Fatalf("take the real Ollama for this test: %v", err)
	}
	t.Cleanup(unlock)
	return strings.TrimSuffix(raw, "/")
}
