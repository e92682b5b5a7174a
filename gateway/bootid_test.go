package gateway

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// A sync job carries the boot id of the foreman whose gateway holds its caller, so a
// later start can tell that its caller is gone; async jobs carry none.
func TestSyncJobsCarryTheGatewayBootID(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 60*time.Second)
	got := post(t, ctx, b.URL, "/api/chat", chatBody("tiny-a", "hello", "false"))
	if got.Status != http.StatusOK {
		t.Fatalf("status %d: %s", got.Status, got.Body)
	}
	j := waitRecord(t, ctx, b.Broker.Store, got.Header.Get(HeaderJobID), func(j *broker.Job) bool { return j.State.Terminal() })
	if boot := b.Broker.Store.BootID(); boot == "" || j.Gateway != boot || !j.Sync {
		t.Errorf("sync job gateway %q sync %v, want the store's boot id %q", j.Gateway, j.Sync, boot)
	}

	resp, body := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`))
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /jobs: %d %s", resp.StatusCode, body)
	}
	id := strings.TrimPrefix(resp.Header.Get("Location"), "/jobs/")
	async := waitRecord(t, ctx, b.Broker.Store, id, func(j *broker.Job) bool { return j.State.Terminal() })
	if async.Gateway != "" {
		t.Errorf("async job gateway %q, want none", async.Gateway)
	}
}
