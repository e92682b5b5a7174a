package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// TestServeWebhookPolicy: serve gives the gateway and the dispatcher one webhook policy.
// By default a loopback receiver is refused at submit; FOREMAN_WEBHOOK_ALLOW_NETS opens
// loopback for both (the receiver gets its event), and the Ollama target stays refused.
func TestServeWebhookPolicy(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	got := make(chan string, 8)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- string(body)
	}))
	t.Cleanup(rcv.Close)
	post := func(a *app.App, hook string) (int, string) {
		t.Helper()
		body := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"state_webhook_url":"` + hook + `","webhook_events":["done"]}`
		resp, err := http.Post("http://"+a.Addr()+"/jobs", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}

	strict := testApp(t, fake.URL, nil)
	waitFor(t, "the first poll", func() bool { return strict.Inventory().Snapshot().Polled })
	if code, out := post(strict, rcv.URL+"/hook"); code != http.StatusBadRequest || !strings.Contains(out, "loopback") {
		t.Fatalf("default policy, loopback receiver: %d %s", code, out)
	}

	open := testApp(t, fake.URL, map[string]string{"FOREMAN_WEBHOOK_ALLOW_NETS": "127.0.0.0/8,::1/128"})
	waitFor(t, "the first poll", func() bool { return open.Inventory().Snapshot().Polled })
	if code, out := post(open, fake.URL+"/api/generate"); code != http.StatusBadRequest || !strings.Contains(out, "foreman's own endpoint") {
		t.Fatalf("webhook to the Ollama target: %d %s", code, out)
	}
	if code, out := post(open, rcv.URL+"/hook"); code != http.StatusAccepted {
		t.Fatalf("opened loopback receiver: %d %s", code, out)
	}
	select {
	case body := <-got:
		if !strings.Contains(body, `"done"`) {
			t.Fatalf("receiver got %s", body)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the opened loopback receiver got no webhook")
	}
}
