package gateway

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A foreman killed between an Idempotency-Key's claim and the job's record leaves the
// claim naming a job that never came. The client's retry after the restart, on the
// embedded server, takes it over at once: no other process can still be storing that
// record. It waited for the dead request's deadline instead (a NATS submit's 30 s, plus a
// grace), past its own 10 s, and got 409 "still being submitted".
func TestIdempotencyClaimOfAKilledForemanIsTakenOverAtOnce(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withBroker(brokertest.WithStore(func(c *broker.Config) { c.Exclusive = true })))
	ctx := testCtx(t, 30*time.Second)
	dead := broker.IdempotencyClaim{JobID: broker.NewID(), Boot: broker.NewID(), Within: natsSubmitTimeout}
	if _, created, err := b.Broker.Store.ClaimIdempotencyKey(ctx, scopedIdempotencyKey("", "killed"), dead); err != nil || !created {
		t.Fatalf("claim: %v %v", created, err)
	}
	resp, data := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a","messages":[]}`), "Idempotency-Key", "killed")
	var s submitted
	_ = json.Unmarshal(data, &s)
	if resp.StatusCode != http.StatusAccepted || s.JobID == "" || s.JobID == dead.JobID {
		t.Fatalf("retry after the kill: %d %s; want 202 with a job of its own", resp.StatusCode, data)
	}
	if c, err := b.Broker.Store.IdempotencyKeyClaim(ctx, scopedIdempotencyKey("", "killed")); err != nil || c.JobID != s.JobID || c.Boot != b.Broker.Store.BootID() {
		t.Errorf("the key's claim after the retry: %+v %v; want its job, by this boot", c, err)
	}
}
