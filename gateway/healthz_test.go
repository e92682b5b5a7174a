package gateway

import (
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"
)

type healthReply struct {
	Status   string `json:"status"`
	Degraded bool   `json:"degraded"`
	Target   struct {
		URL       string     `json:"url"`
		Reachable bool       `json:"reachable"`
		Error     string     `json:"error"`
		LastPoll  *time.Time `json:"last_poll"`
	} `json:"target"`
	NATS string `json:"nats"`
}

func getHealth(t *testing.T, b *testBundle) healthReply {
	t.Helper()
	resp, body := b.request(t, http.MethodGet, "/healthz", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("/healthz: %d %s (it must be 200 while the process lives)", resp.StatusCode, body)
	}
	var h healthReply
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatalf("/healthz body %s: %v", body, err)
	}
	return h
}

// /healthz turns degraded when the inventory's poll fails and clears on recovery, with
// the real poll loop running.
func TestHealthzDegradedAndRecovery(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withPolling(20*time.Millisecond))
	waitHealth := func(what string, ok func(healthReply) bool) healthReply {
		t.Helper()
		var h healthReply
		eventually(t, 10*time.Second, "/healthz "+what, func() bool {
			h = getHealth(t, b)
			return ok(h)
		})
		return h
	}
	h := waitHealth("healthy", func(h healthReply) bool { return h.Target.Reachable })
	if h.Status != "ok" || h.Degraded || h.NATS != "ok" || h.Target.URL != b.Fake.URL || h.Target.LastPoll == nil {
		t.Errorf("healthy: %+v", h)
	}
	b.Fake.SetDown(true)
	h = waitHealth("degraded", func(h healthReply) bool { return h.Degraded })
	if h.Status != "degraded" || h.Target.Reachable || h.Target.Error == "" {
		t.Errorf("degraded: %+v", h)
	}
	b.Fake.SetDown(false)
	h = waitHealth("recovery", func(h healthReply) bool { return !h.Degraded })
	if h.Status != "ok" || !h.Target.Reachable || h.Target.Error != "" {
		t.Errorf("recovered: %+v", h)
	}
}

func TestHealthzNATSDegraded(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) {
		c.NATSHealth = func() error { return errors.New("jetstream not ready") }
	}))
	h := getHealth(t, b)
	if h.Status != "degraded" || !h.Degraded || h.NATS != "jetstream not ready" || !h.Target.Reachable {
		t.Errorf("%+v", h)
	}
}

// A target the inventory still reaches but whose runner stalled a job is degraded, with
// the worker's reason, until the hook clears; foreman_target_degraded says so too, as
// /healthz does (it said 0 through a stall: an alert on it never fired for a runner
// that hung while Ollama answered the polls).
func TestHealthzTargetStalled(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	stall := errors.New("stalled: no response for 5m0s on job 01JOB")
	b := newTestBundle(t, withGateway(func(c *Config) {
		c.TargetHealth = func() error { mu.Lock(); defer mu.Unlock(); return stall }
	}))
	h := getHealth(t, b)
	if h.Status != "degraded" || !h.Degraded || h.Target.Error != "stalled: no response for 5m0s on job 01JOB" || !h.Target.Reachable || h.NATS != "ok" {
		t.Errorf("stalled: %+v", h)
	}
	if deg := metricValue(scrape(t, b), "foreman_target_degraded"); deg != 1 {
		t.Errorf("stalled: foreman_target_degraded = %v, want 1 (as /healthz says)", deg)
	}
	mu.Lock()
	stall = nil
	mu.Unlock()
	h = getHealth(t, b)
	if h.Status != "ok" || h.Degraded || h.Target.Error != "" {
		t.Errorf("after the stall cleared: %+v", h)
	}
	if deg := metricValue(scrape(t, b), "foreman_target_degraded"); deg != 0 {
		t.Errorf("after the stall cleared: foreman_target_degraded = %v, want 0", deg)
	}
}

// Until a poll of the target has ended, /healthz does not say ok: the target is not known
// to be reachable (a first poll of a target that hangs takes up to its bound).
func TestHealthzBeforeTheFirstPoll(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withoutInitialPoll())
	h := getHealth(t, b)
	if h.Status != "degraded" || !h.Degraded || h.Target.Reachable || h.Target.Error != "no poll of ollama has ended yet" {
		t.Errorf("before the first poll: %+v", h)
	}
	if err := b.Inv.Refresh(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	h = getHealth(t, b)
	if h.Status != "ok" || h.Degraded || !h.Target.Reachable || h.Target.Error != "" {
		t.Errorf("after the first poll: %+v", h)
	}
}
