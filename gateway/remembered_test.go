package gateway

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// With only a remembered model list (foreman started while its target is down, ADR-0047),
// jobs for those models are queued and others refused as after a failed poll, while
// nothing shows the target reachable: /healthz, the targets of /queue, foreman_target_up,
// and /api/tags and /api/ps, which serve no remembered list.
func TestRememberedModelsQueueButNothingLooksReachable(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withoutInitialPoll(),
		withInventory(func(c *ollama.InventoryConfig) { c.Remembered = []string{"tiny-a:latest"} }))
	b.Fake.SetDown(true)

	check := func(when string) {
		t.Helper()
		// First: the requests below that are refused poll the target again.
		fams := scrape(t, b)
		if up := metricValue(fams, "foreman_target_up"); up != 0 {
			t.Errorf("%s: foreman_target_up = %v, want 0", when, up)
		}
		if deg := metricValue(fams, "foreman_target_degraded"); deg != 1 {
			t.Errorf("%s: foreman_target_degraded = %v, want 1 (as /healthz says)", when, deg)
		}
		if resp, out := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a","prompt":"x","kind":"generate"}`)); resp.StatusCode != http.StatusAccepted {
			t.Errorf("%s: /jobs for a remembered model: %d %s", when, resp.StatusCode, out)
		}
		if resp, out := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-b","prompt":"x","kind":"generate"}`)); resp.StatusCode != http.StatusBadGateway ||
			!strings.Contains(string(out), "is not in its last known model list") {
			t.Errorf("%s: /jobs for a model not remembered: %d %s", when, resp.StatusCode, out)
		}
		for _, path := range []string{"/api/tags", "/api/ps"} {
			if resp, out := b.request(t, http.MethodGet, path, nil); resp.StatusCode != http.StatusBadGateway {
				t.Errorf("%s: %s: %d %s, want 502", when, path, resp.StatusCode, out)
			}
		}
		_, out := b.request(t, http.MethodGet, "/healthz", nil)
		var h health
		if err := json.Unmarshal(out, &h); err != nil || h.Target.Reachable || len(h.Targets) != 1 || h.Targets[0].Reachable {
			t.Errorf("%s: /healthz %s", when, out)
		}
		// GET /queue's targets (it needs a worker, which this bundle has none of).
		if v, _ := b.GW.targetViews(testCtx(t, 10*time.Second)); len(v) != 1 || v[0].Reachable || !slices.Equal(v[0].Models, []string{"tiny-a:latest"}) {
			t.Errorf("%s: targets %+v", when, v)
		}
	}
	check("before any poll")
	if err := b.Inv.Refresh(testCtx(t, 10*time.Second)); err == nil {
		t.Fatal("the poll of a down target succeeded")
	}
	check("after a failed poll")
}
