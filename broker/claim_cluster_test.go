package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A POST /jobs with an Idempotency-Key claims the key first, with one create that no
// election was retried through: the job bucket's leader dead (a node killed, a frozen
// one), the claim failed with NATS's own error, a 500 "internal error", or waited out
// the whole submit and answered 504 "timed out" without Retry-After (a black-box run
// froze a node), where every other submit write is retried through the election and
// answers 503 "retry shortly" when the store stays away. The claim is a store write as
// any other.
func TestClusterIdempotencyClaimThroughLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	st := c.Open(t, func(cfg *broker.Config) { cfg.RetryWindow = electionWindow })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	submitReadable(t, ctx, st) // the bucket in use, its leader known
	c.Kill(c.StreamLeader("KV_" + broker.JobsBucket))
	ctx = afterKill(t)
	claim := broker.IdempotencyClaim{JobID: broker.NewID(), Until: time.Now().Add(time.Minute), Within: time.Minute}
	got, created, err := st.ClaimIdempotencyKey(ctx, "\nbatch-42", claim)
	if err != nil || !created || got.JobID != claim.JobID {
		t.Fatalf("claim after the leader died: %+v created=%v err=%v, want this claim made", got, created, err)
	}
}

// With no quorum left the claim gives up with ErrUnavailable (the gateway's 503 with
// Retry-After), not the submit's deadline (504) or a raw NATS error (500).
func TestClusterIdempotencyClaimUnavailable(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	st := c.Open(t, func(cfg *broker.Config) { cfg.RetryWindow = 2 * time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	submitReadable(t, ctx, st)
	c.Kill(0)
	c.Kill(1)
	claim := broker.IdempotencyClaim{JobID: broker.NewID(), Until: time.Now().Add(time.Minute), Within: time.Minute}
	_, _, err := st.ClaimIdempotencyKey(ctx, "\nbatch-43", claim)
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("claim without quorum: %v, want ErrUnavailable", err)
	}
}
