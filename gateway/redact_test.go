package gateway

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// syncBuffer is a log sink the handlers and the test may use at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestTargetPasswordNeverShown: the login in the target's URL (FOREMAN_OLLAMA_URL), its
// password and its user name, shows neither on the unauthenticated /healthz, healthy or
// not, nor in a 502 of a pass-through route, nor in the log.
func TestTargetPasswordNeverShown(t *testing.T) {
	t.Parallel()
	const user, password = "opsadmin", "s3cret"
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := newTestBundle(t, withTargetUserinfo(user+":"+password),
		withGateway(func(c *Config) { c.Logger = log }),
		withInventory(func(c *ollama.InventoryConfig) { c.Logger = log }))
	if !strings.Contains(b.GW.cfg.TargetURL, password) {
		t.Fatalf("the test's target URL %q has no password", b.GW.cfg.TargetURL)
	}
	noPassword := func(what string, body []byte) {
		t.Helper()
		if bytes.Contains(body, []byte(password)) || bytes.Contains(body, []byte(user)) {
			t.Errorf("%s shows the login: %s", what, body)
		}
	}

	resp, body := b.request(t, http.MethodGet, "/healthz", nil)
	noPassword("/healthz", body)
	var h healthReply
	if err := json.Unmarshal(body, &h); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz: %d %s", resp.StatusCode, body)
	}
	if want := strings.Replace(b.Fake.URL, "://", "://xxxxx@", 1); h.Target.URL != want {
		t.Errorf("/healthz target url %q, want %q", h.Target.URL, want)
	}

	b.Fake.SetDown(true)
	if err := b.Inv.Refresh(testCtx(t, 10*time.Second)); err == nil {
		t.Fatal("refresh against a down target succeeded")
	}
	_, body = b.request(t, http.MethodGet, "/healthz", nil)
	noPassword("/healthz of a down target", body)
	if h = getHealth(t, b); h.Target.Error == "" || !strings.Contains(h.Target.Error, "xxxxx") {
		t.Errorf("/healthz of a down target: error %q, want the redacted URL in it", h.Target.Error)
	}

	for _, path := range []string{"/api/embed", "/v1/embeddings", "/api/pull"} {
		resp, body := b.request(t, http.MethodPost, path, []byte(`{"model":"tiny-embed","input":"x"}`))
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("%s with the target down: %d %s, want 502", path, resp.StatusCode, body)
		}
		noPassword("the 502 of "+path, body)
	}
	if !strings.Contains(logs.String(), "request failed") {
		t.Fatalf("the 502s were not logged: %s", logs.String())
	}
	noPassword("the log", []byte(logs.String()))
}

// The own target is recognized among the published ones whatever userinfo its URL has: a
// foreman publishes its URL without it (ADR-0029), and a pass-through call must not take
// the own Ollama, reached under another foreman's name, for another Mac.
func TestSameTargetURLIgnoresUserinfo(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		a, b string
		same bool
	}{
		{"http://127.0.0.1:11434", "http://user:s3cret@127.0.0.1:11434", true},
		{"http://127.0.0.1:11434", "http://s3cret@127.0.0.1:11434", true},
		{"http://127.0.0.1:11434", "http://127.0.0.1:11434", true},
		{"http://127.0.0.1:11434", "http://user:s3cret@127.0.0.1:11435", false},
		{"http://mac-a:11434", "http://mac-b:11434", false},
	} {
		if got := sameTargetURL(tt.a, tt.b); got != tt.same {
			t.Errorf("sameTargetURL(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.same)
		}
	}
}

// A queued call that fails is logged with the job it made, the id its answer carries in
// X-Foreman-Job-Id: an operator reading "request failed" finds the job (GET /jobs/{id},
// the worker's lines about it) without matching times.
func TestFailedQueuedCallLogsItsJob(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := newQueuedBundle(t, nil, withGateway(func(c *Config) { c.Logger = log }))
	b.Fake.FailNextOn("/api/chat", 1, ollamatest.Fail500)
	resp, body := b.request(t, http.MethodPost, "/api/chat", chatBody("tiny-a", "hi", "false"))
	id := resp.Header.Get(HeaderJobID)
	if resp.StatusCode != http.StatusInternalServerError || id == "" {
		t.Fatalf("chat with the target failing: %d %s (job %q), want 500 naming its job", resp.StatusCode, body, id)
	}
	var line string
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, `msg="request failed"`) {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("the 500 was not logged:\n%s", logs.String())
	}
	if !strings.Contains(line, "job_id="+id) {
		t.Errorf("the failed call's log line does not name its job %s: %s", id, line)
	}
}
