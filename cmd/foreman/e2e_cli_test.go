package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// TestChatRealOllama: `foreman chat` through a real foreman in front of a real Ollama prints
// what Ollama itself answers to the same chat (temperature 0: deterministic).
func TestChatRealOllama(t *testing.T) {
	target := ollamatest.RealOllama(t)
	t.Parallel()
	a := testApp(t, target, nil)
	r := runCLI(t, map[string]string{"FOREMAN_URL": "http://" + a.Addr()}, nil, nil, "chat", "-m", "tiny-a", "hello world")
	if r.code != 0 {
		t.Fatalf("foreman chat: exit %d, stderr %s", r.code, r.stderr)
	}

	body := `{"model":"tiny-a","messages":[{"role":"user","content":"hello world"}],"stream":false}`
	resp, err := http.Post(target+"/api/chat", "application/json", bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var direct struct {
		Message struct{ Content string } `json:"message"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&direct); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("Ollama directly: %d, %v", resp.StatusCode, err)
	}
	// The terminal gets the text with its control characters shown escaped (the tiny
	// model's gibberish has some), newlines and tabs kept.
	if direct.Message.Content == "" || r.stdout != termText(direct.Message.Content)+"\n" {
		t.Fatalf("foreman chat printed %q, Ollama answers %q", r.stdout, direct.Message.Content)
	}
}
