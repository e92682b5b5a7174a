package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// The fuzz targets below drive a whole gateway: real embedded NATS, the fake Ollama and a
// worker, built once per fuzzing process (about a second) and shared by every input. An
// accepted input runs as a real job, so they manage a few hundred to a few thousand
// inputs a second; they are meant for short runs next to the parser targets, which
// explore the same decoders much faster.

// answerDeadline bounds one fuzzed request: an answer that takes longer is a hang.
const answerDeadline = 30 * time.Second

// fuzzBundle is the gateway the HTTP and NATS fuzz targets share within one process. The
// fake caps its replies so that a fuzzed num_predict cannot ask for an endless answer.
// A fuzzed job may carry any state_webhook_url: it is checked at submit and stored, and
// never contacted, since no webhook dispatcher runs here (newTestBundle starts none, the
// worker sends no webhooks; wantNoWebhookTraffic checks both halves).
func fuzzBundle(f *testing.F, fake ...ollamatest.Option) (*queuedBundle, *atomic.Int64) {
	var lookups atomic.Int64
	b := newQueuedBundle(f, nil, withFake(append([]ollamatest.Option{ollamatest.WithMaxTokens(8)}, fake...)...), withGateway(func(c *Config) {
		c.WebhookPolicy.LookupNetIP = func(_ context.Context, _, host string) ([]netip.Addr, error) {
			lookups.Add(1)
			return nil, &net.DNSError{Err: "no lookups in the fuzz bundle", Name: host, IsNotFound: true}
		}
	}))
	return b, &lookups
}

// wantNoWebhookTraffic fails if the bundle's webhook policy ever resolved a name (the
// submit check does no DNS) or if a dispatcher answers for job id.
func wantNoWebhookTraffic(t *testing.T, b *queuedBundle, lookups *atomic.Int64, id string) {
	t.Helper()
	if n := lookups.Load(); n != 0 {
		t.Fatalf("the webhook policy resolved %d names", n)
	}
	if id == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), answerDeadline)
	defer cancel()
	req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/jobs/"+id+"/deliveries/redeliver", nil)
	w := httptest.NewRecorder()
	b.GW.ServeHTTP(w, req)
	noWebhook := w.Code == http.StatusConflict && strings.Contains(w.Body.String(), "job has no webhook")
	if w.Code != http.StatusServiceUnavailable && !noWebhook {
		t.Fatalf("redeliver %s: %d %s, want 503 (no dispatcher)", id, w.Code, w.Body)
	}
}

var fuzzRoutes = []string{"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions", "/jobs"}

// FuzzHTTPSubmit posts fuzzed bodies to the queued routes and POST /jobs. Whatever the
// body, the answer comes, is never a 5xx but 503 (queue or storage full), and when it is
// not a 2xx it is JSON with an "error" member; a queued call that ran answers the status
// the target gives the same body; an accepted job is a 202 with its id.
// Run with: go test -run '^$' -fuzz '^FuzzHTTPSubmit$' -fuzztime 30s ./gateway
func FuzzHTTPSubmit(f *testing.F) {
	f.Add(uint8(0), []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`))
	f.Add(uint8(1), []byte(`{"model":"tiny-b","prompt":"hi","stream":false,"options":{"num_predict":3}}`))
	f.Add(uint8(2), []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":true}`))
	f.Add(uint8(3), []byte(`{"model":"tiny-a","prompt":"hi","max_tokens":2}`))
	f.Add(uint8(4), []byte(`{"kind":"generate","model":"tiny-a","prompt":"x","state_webhook_url":"http://127.0.0.1:9/h"}`))
	f.Add(uint8(4), []byte(`{"kind":"embed","model":"tiny-embed","input":"x"}`))
	f.Add(uint8(0), []byte(`{"model":"tiny-embed","messages":[]}`))
	f.Add(uint8(1), []byte(`{"model":"nope"}`))
	f.Add(uint8(2), []byte(`{"model":"tiny-a","messages":"x"}`))
	f.Add(uint8(4), []byte(`{`))
	b, lookups := fuzzBundle(f)
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		path := fuzzRoutes[int(route)%len(fuzzRoutes)]
		ctx, cancel := context.WithTimeout(context.Background(), answerDeadline)
		defer cancel()
		req := httptest.NewRequestWithContext(ctx, http.MethodPost, path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		b.GW.ServeHTTP(w, req)
		if ctx.Err() != nil {
			t.Fatalf("POST %s %q: no answer within %s", path, body, answerDeadline)
		}
		status, out := w.Code, w.Body.Bytes()
		if status >= 500 && status != http.StatusServiceUnavailable {
			t.Fatalf("POST %s %q: %d %s", path, body, status, out)
		}
		if status/100 != 2 {
			wantErrorBody(t, path, status, out)
		}
		if path != "/jobs" && w.Header().Get(HeaderJobID) != "" {
			// The job ran: the client gets the status the target gives the same body.
			direct := post(t, ctx, b.Fake.URL, path, body)
			if direct.Status != status {
				t.Fatalf("POST %s %q: %d %s, but the target answers %d %s", path, body, status, out, direct.Status, direct.Body)
			}
			// Streamed or whole as the target answers it (a client reads one or the other).
			if got, want := mediaType(w.Header().Get("Content-Type")), mediaType(direct.CType); status == http.StatusOK && got != want {
				t.Fatalf("POST %s %q: 200 %s, but the target answers 200 %s", path, body, got, want)
			}
		}
		if status/100 != 2 {
			return
		}
		if path == "/jobs" {
			var s submitted
			if status != http.StatusAccepted || json.Unmarshal(out, &s) != nil || broker.ValidateID(s.JobID) != nil {
				t.Fatalf("POST /jobs %q: %d %s", body, status, out)
			}
			wantNoWebhookTraffic(t, b, lookups, s.JobID)
		}
	})
}

// FuzzNATSSubmit sends fuzzed foreman.jobs.submit requests (data and Idempotency-Key).
// Every request gets a JSON reply: a job id whose record exists, or an error with the 4xx
// (or 503) POST /jobs would answer. A repeated request with the same key gets the same id.
// Run with: go test -run '^$' -fuzz '^FuzzNATSSubmit$' -fuzztime 30s ./gateway
func FuzzNATSSubmit(f *testing.F) {
	f.Add([]byte(`{"model":"tiny-a","kind":"generate","prompt":"x"}`), "")
	f.Add([]byte(`{"model":"tiny-b","messages":[]}`), "k1")
	f.Add([]byte(`{"model":"nope"}`), "")
	f.Add([]byte(`not json`), "k2")
	f.Add([]byte(`{"model":"tiny-a","state_webhook_url":"https://hooks.example/h","webhook_events":["done"]}`), "a key with spaces: and colons")
	b, lookups := fuzzBundle(f)
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.GW.RunNATSSubmit(runCtx) }()
	f.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			f.Errorf("RunNATSSubmit: %v", err)
		}
	})
	nc := b.Broker.Conn
	ready := nats.NewMsg(broker.SubmitSubject)
	ready.Data = []byte("{}")
	for { // wait for the responder's subscription
		ctx, cancel := context.WithTimeout(context.Background(), answerDeadline)
		_, err := nc.RequestMsgWithContext(ctx, ready)
		cancel()
		if err == nil {
			break
		}
		if !errors.Is(err, nats.ErrNoResponders) {
			f.Fatal(err)
		}
	}
	request := func(t *testing.T, data []byte, key string) submitReply {
		t.Helper()
		m := nats.NewMsg(broker.SubmitSubject)
		m.Data = data
		if key != "" {
			m.Header.Set("Idempotency-Key", key)
		}
		ctx, cancel := context.WithTimeout(context.Background(), answerDeadline)
		defer cancel()
		resp, err := nc.RequestMsgWithContext(ctx, m)
		if err != nil {
			t.Fatalf("submit %q (key %q): %v", data, key, err)
		}
		var r submitReply
		if err := json.Unmarshal(resp.Data, &r); err != nil {
			t.Fatalf("submit %q: reply %q is not JSON", data, resp.Data)
		}
		if (r.JobID == "") == (r.Error == "") {
			t.Fatalf("submit %q: reply %q has neither or both of job_id and error", data, resp.Data)
		}
		if r.Error != "" && (r.Status < 400 || r.Status > 499) && r.Status != http.StatusServiceUnavailable {
			t.Fatalf("submit %q (key %q): status %d %q", data, key, r.Status, r.Error)
		}
		return r
	}
	f.Fuzz(func(t *testing.T, data []byte, key string) {
		if strings.ContainsAny(key, "\r\n") {
			return // a NATS header value cannot hold them
		}
		r := request(t, data, key)
		wantNoWebhookTraffic(t, b, lookups, r.JobID)
		if r.JobID == "" {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), answerDeadline)
		defer cancel()
		if j, _, err := b.Broker.Store.Get(ctx, r.JobID); err != nil || !j.Kind.Valid() || j.Sync {
			t.Fatalf("submit %q: job %s: %+v %v", data, r.JobID, j, err)
		}
		if strings.TrimSpace(key) != "" {
			if again := request(t, data, key); again.JobID != r.JobID {
				t.Fatalf("submit %q twice with key %q: %s then %+v", data, key, r.JobID, again)
			}
		}
	})
}

// mediaType is a Content-Type without its parameters.
func mediaType(ctype string) string {
	m, _, _ := strings.Cut(ctype, ";")
	return strings.TrimSpace(m)
}
