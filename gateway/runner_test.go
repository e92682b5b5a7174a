package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// GET /jobs/{id} names the Mac that runs a job, and says when that Mac's foreman is gone
// (its presence lapsed): the record still says working, but the job runs again only once
// its message comes back (ADR-0064). The list names the runner without reading presence.
func TestJobViewNamesItsRunnerAndSaysWhenItIsGone(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	nc, err := b.Broker.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	other, err := broker.Open(ctx, broker.Config{Conn: nc})
	if err != nil {
		t.Fatal(err)
	}
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`)
	// The other foreman's worker starts it, as its start write does.
	if _, _, err := other.Modify(ctx, id, func(j *broker.Job) error {
		j.State, j.Attempt, j.Runner, j.RunnerBoot, j.RunnerAttempt = broker.StateWorking, 1, "studio", other.BootID(), 1
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	type view struct {
		State      broker.State `json:"state"`
		Runner     string       `json:"runner"`
		RunnerGone *bool        `json:"runner_gone"`
	}
	get := func() view {
		t.Helper()
		resp, out := b.request(t, http.MethodGet, "/jobs/"+id, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /jobs/%s: %d %s", id, resp.StatusCode, out)
		}
		var v view
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := get(); v.State != broker.StateWorking || v.Runner != "studio" || v.RunnerGone != nil {
		t.Fatalf("running on studio, its foreman there: %+v", v)
	}

	gone, cancel := context.WithCancel(ctx)
	cancel()
	if err := other.Announce(gone); err != nil {
		t.Fatal(err)
	}
	if v := get(); v.State != broker.StateWorking || v.Runner != "studio" || v.RunnerGone == nil || !*v.RunnerGone {
		t.Errorf("running on studio, its foreman gone: %+v, want runner_gone true", v)
	}
	resp, out := b.request(t, http.MethodGet, "/jobs", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /jobs: %d %s", resp.StatusCode, out)
	}
	var list struct {
		Jobs []view `json:"jobs"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Jobs) != 1 || list.Jobs[0].Runner != "studio" {
		t.Errorf("list %s, want the job on studio", out)
	}
}
