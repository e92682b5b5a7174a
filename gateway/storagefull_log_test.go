package gateway

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// A store at its storage limit refuses submits with 503 "storage full"; the operator's
// line says what to do about it, not only the server's "insufficient resources".
func TestStorageFullIsLoggedWithWhatToDo(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b := newTestBundle(t,
		withBroker(brokertest.WithNATS(func(c *natsd.Config) { c.MaxStore = 8 << 20 })),
		withGateway(func(c *Config) { c.Logger = log }))
	brokertest.FillStore(t, b.Broker.Conn)
	resp, body := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`))
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "storage full") {
		t.Fatalf("submit to a full store: %d %s, want 503 storage full", resp.StatusCode, body)
	}
	var line string
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, "level=ERROR") && strings.Contains(l, "status=503") {
			line = l
		}
	}
	if !strings.Contains(line, "FOREMAN_DATA_DIR") || !strings.Contains(line, "FOREMAN_JOB_TTL") {
		t.Errorf("the storage-full line %q does not say what to do\n%s", line, logs.String())
	}
}
