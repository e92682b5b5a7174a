package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A write that meets the election after the job bucket's leader died is retried until
// the new leader takes it, instead of failing.
func TestClusterWriteThroughLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	st := c.Open(t, func(cfg *broker.Config) { cfg.RetryWindow = 30 * time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	j, err := st.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	// Direct reads are served by any replica, and one may not have applied the create
	// yet: the write under test starts from a record every replica has.
	eventually(t, time.Minute, "the record readable", func() bool {
		_, _, err := st.Get(ctx, j.ID)
		return err == nil
	})
	c.Kill(c.StreamLeader("KV_" + broker.JobsBucket))
	if _, _, err := st.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateCanceled; return nil }); err != nil {
		t.Fatalf("write after the leader died: %v", err)
	}
	// A replica's direct read may lag the write for a moment.
	eventually(t, time.Minute, "the write read back as canceled", func() bool {
		got, _, err := st.Get(ctx, j.ID)
		return err == nil && got.State == broker.StateCanceled
	})
}

// With no quorum left, reads give up after the retry window with ErrUnavailable (the
// gateway's 503), not a raw NATS error.
func TestClusterReadUnavailable(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	st := c.Open(t, func(cfg *broker.Config) { cfg.RetryWindow = 2 * time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	j, err := st.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	c.Kill(0)
	c.Kill(1)
	_, _, err = st.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateCanceled; return nil })
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("write without quorum: %v, want ErrUnavailable", err)
	}
}
