package gateway

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
)

// noSubmitDNS is a resolver seam for submit-time policies: the check at submit reads
// the URL only, so any lookup fails the test.
func noSubmitDNS(t *testing.T) func(context.Context, string, string) ([]netip.Addr, error) {
	return func(_ context.Context, _, host string) ([]netip.Addr, error) {
		t.Errorf("the submit check resolved %q", host)
		return nil, &net.DNSError{Err: "no lookups at submit", Name: host, IsNotFound: true}
	}
}

// wantNoDispatcher fails unless no webhook dispatcher runs on b, so the webhooks of the
// jobs a test accepted (addresses like 10.x, the policy's input) are never sent.
func wantNoDispatcher(t *testing.T, b *testBundle, id string) {
	t.Helper()
	resp, out := b.request(t, http.MethodPost, "/jobs/"+id+"/deliveries/redeliver", nil)
	wantJobError(t, "redeliver without a dispatcher", resp, out, http.StatusServiceUnavailable)
}

// TestSubmitRefusesWebhookAddresses: with the default policy, a webhook URL naming a
// loopback, link-local, unspecified or multicast address (or a localhost name, or a host
// name that is not ASCII) is a 400
// over HTTP and over NATS, and nothing is queued; LAN addresses and names pass.
// The addresses are what the policy checks at submit; none is contacted: the check does
// no DNS (noSubmitDNS) and no dispatcher runs in the bundle (wantNoDispatcher).
func TestSubmitRefusesWebhookAddresses(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) { c.WebhookPolicy = webhook.Policy{LookupNetIP: noSubmitDNS(t)} }))
	refused := map[string]string{
		"http://127.0.0.1:11434/api/generate":     "loopback",
		"http://127.8.9.10/h":                     "loopback",
		"http://[::1]:8080/h":                     "loopback",
		"http://[::ffff:127.0.0.1]/h":             "loopback",
		"http://localhost:9000/h":                 "loopback",
		"http://LOCALHOST./h":                     "loopback",
		"http://hooks.localhost/h":                "loopback",
		"http://169.254.169.254/latest/meta-data": "link-local",
		"http://[fe80::1%25eth0]/h":               "link-local",
		"http://0.0.0.0:8080/h":                   "unspecified",
		"http://[::]/h":                           "unspecified",
		"http://224.0.0.1/h":                      "multicast",
		"https://255.255.255.255/h":               "broadcast",
		// Names Go's HTTP client maps to loopback before it dials.
		"http://127。0。0。1/h": "must be ASCII",
		"http://ⓛocalhost/h": "must be ASCII",
	}
	for u, why := range refused {
		body := `{"model":"tiny-a","messages":[],"state_webhook_url":"` + u + `"}`
		resp, out := b.request(t, http.MethodPost, "/jobs", []byte(body))
		wantJobError(t, u, resp, out, http.StatusBadRequest)
		if !strings.Contains(string(out), "state_webhook_url") || !strings.Contains(string(out), why) {
			t.Errorf("%s: error %s does not say it is %s", u, out, why)
		}
	}
	for _, u := range []string{"http://10.1.2.3:9000/h", "https://192.168.1.20/h", "https://hooks.example/h"} {
		id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[],"state_webhook_url":"`+u+`"}`)
		wantNoDispatcher(t, b, id)
	}

	// The NATS submit goes through the same check.
	runUntilCleanup(t, "nats submit", b.GW.RunNATSSubmit)
	ctx := testCtx(t, 20*time.Second)
	var reply submitReply
	for {
		m, err := b.Broker.Conn.RequestWithContext(ctx, broker.SubmitSubject,
			[]byte(`{"model":"tiny-a","messages":[],"state_webhook_url":"http://169.254.169.254/x"}`))
		if err != nil && strings.Contains(err.Error(), "no responders") {
			continue // the responder is still subscribing
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(m.Data, &reply); err != nil {
			t.Fatalf("reply %s", m.Data)
		}
		break
	}
	if reply.Status != http.StatusBadRequest || reply.JobID != "" || !strings.Contains(reply.Error, "link-local") {
		t.Fatalf("NATS submit of a metadata-address webhook: %+v", reply)
	}
	if n, _ := b.Broker.Store.QueueLen(ctx); n != 3 {
		t.Fatalf("queued %d jobs, want only the 3 allowed ones", n)
	}
}

// TestSubmitWebhookPolicyOptions: FOREMAN_WEBHOOK_ALLOW_NETS opens a range,
// FOREMAN_WEBHOOK_DENY_PRIVATE closes the LAN, and the target's own host:port stays
// refused even inside an opened range. As above, nothing is resolved or contacted.
func TestSubmitWebhookPolicyOptions(t *testing.T) {
	t.Parallel()
	nets, err := webhook.ParseNets("127.0.0.0/8, 10.9.0.0/16")
	if err != nil {
		t.Fatal(err)
	}
	b := newTestBundle(t, withGateway(func(c *Config) {
		ep, _ := webhook.EndpointOf(c.TargetURL)
		c.WebhookPolicy = webhook.Policy{AllowNets: nets, DenyPrivate: true, Protected: []string{ep, "mac.lan:11434"}, LookupNetIP: noSubmitDNS(t)}
	}))
	jobsSubmit(t, b, `{"model":"tiny-a","messages":[],"state_webhook_url":"http://127.0.0.1:9/h"}`)
	wantNoDispatcher(t, b, jobsSubmit(t, b, `{"model":"tiny-a","messages":[],"state_webhook_url":"http://10.9.1.1/h"}`))
	for u, why := range map[string]string{
		"http://10.1.2.3/h":                                      "private",
		"http://192.168.1.5/h":                                   "private",
		"http://[fd00::5]/h":                                     "private",
		b.Fake.URL + "/api/generate":                             "foreman's own endpoint",
		"http://MAC.lan:11434/api/generate":                      "foreman's own endpoint",
		strings.Replace(b.Fake.URL, "127.0.0.1", "localhost", 1): "foreman's own endpoint",
	} {
		resp, out := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a","messages":[],"state_webhook_url":"`+u+`"}`))
		wantJobError(t, u, resp, out, http.StatusBadRequest)
		if !strings.Contains(string(out), why) {
			t.Errorf("%s: error %s does not say %q", u, out, why)
		}
	}
}

// TestSubmitRefusesWebhookURLPortOutOfRange: a webhook URL whose port is no TCP port (0,
// or past 65535, which Go's URL parser takes as digits) is a 400 at submit, over HTTP
// and NATS alike: no dial could ever reach it, so a 202 would leave a job whose every
// delivery fails until its attempts are spent. Ports written with leading zeros are
// ports (the dialer reads them so) and pass. Nothing is resolved or contacted.
func TestSubmitRefusesWebhookURLPortOutOfRange(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) { c.WebhookPolicy = webhook.Policy{LookupNetIP: noSubmitDNS(t)} }))
	for _, u := range []string{
		"https://hooks.example:0/h", "https://hooks.example:65536/h", "http://hooks.example:99999/h",
		"http://10.1.2.3:76970/h", "http://hooks.example:000/h", "http://hooks.example:18446744073709551617/h",
	} {
		resp, out := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a","messages":[],"state_webhook_url":"`+u+`"}`))
		wantJobError(t, u, resp, out, http.StatusBadRequest)
		if !strings.Contains(string(out), "port") {
			t.Errorf("%s: error %s does not name the port", u, out)
		}
	}
	for _, u := range []string{"https://hooks.example:8443/h", "http://hooks.example:00080/h", "http://hooks.example:65535/h", "http://hooks.example:/h"} {
		wantNoDispatcher(t, b, jobsSubmit(t, b, `{"model":"tiny-a","messages":[],"state_webhook_url":"`+u+`"}`))
	}

	runUntilCleanup(t, "nats submit", b.GW.RunNATSSubmit)
	ctx := testCtx(t, 20*time.Second)
	for {
		m, err := b.Broker.Conn.RequestWithContext(ctx, broker.SubmitSubject,
			[]byte(`{"model":"tiny-a","messages":[],"state_webhook_url":"https://hooks.example:65536/h"}`))
		if err != nil && strings.Contains(err.Error(), "no responders") {
			continue // the responder is still subscribing
		}
		if err != nil {
			t.Fatal(err)
		}
		var reply submitReply
		if err := json.Unmarshal(m.Data, &reply); err != nil || reply.Status != http.StatusBadRequest || reply.JobID != "" {
			t.Fatalf("NATS submit with port 65536: %s", m.Data)
		}
		break
	}
	if n, _ := b.Broker.Store.QueueLen(ctx); n != 4 {
		t.Fatalf("queued %d jobs, want only the 4 with a real port", n)
	}
}
