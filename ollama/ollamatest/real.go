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
	return realOllama(t, RealOllamaEnv, "")
}

// RealOllama2Env names the variable that points end-to-end tests at a second real Ollama
// that keeps two models loaded (OLLAMA_MAX_LOADED_MODELS=2).
const RealOllama2Env = "FOREMAN_TEST_OLLAMA2_URL"

// RealOllama2 is RealOllama for the Ollama named by FOREMAN_TEST_OLLAMA2_URL.
func RealOllama2(t testing.TB) string {
	t.Helper()
	return realOllama(t, RealOllama2Env, "OLLAMA_MAX_LOADED_MODELS=2 ")
}

func realOllama(t testing.TB, env, startEnv string) string {
	t.Helper()
	raw := os.Getenv(env)
	if raw == "" {
		t.Skipf("%s is unset: start a real Ollama with %s../shared/realollama/start.sh and set it to the URL it prints", env, startEnv)
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		t.Fatalf("%s=%q: not a URL", env, raw)
	}
	name := "foreman-realollama-" + strings.NewReplacer(":", "-", "[", "", "]", "").Replace(u.Host) + ".lock"
	unlock, err := lockFile(filepath.Join(os.TempDir(), name))
	if err != nil {
		t.Fatalf("take the real Ollama for this test: %v", err)
	}
	t.Cleanup(unlock)
	return strings.TrimSuffix(raw, "/")
}
