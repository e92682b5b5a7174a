package broker_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A cluster that lost its quorum leaves every write unanswered. After 30 s /healthz said
// "is its disk full? once there is room, a store that still refuses needs foreman
// restarted" (a black-box run, two of three nodes killed): no disk was full, and the
// foremen resume by themselves once the nodes are back; an operator told so at 3 am
// restarts every foreman for nothing. On a shared NATS writes that no one answers are
// worded as the cluster not answering.
func TestWriteHealthOfAClusterWithoutQuorumNamesTheCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	c := brokertest.NewCluster(t, 3)
	st := c.Open(t, func(cfg *broker.Config) { cfg.RetryWindow = 2 * time.Second; cfg.Now = clock })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	submitReadable(t, ctx, st)
	c.Kill(0)
	c.Kill(1)
	submit := func() {
		t.Helper()
		_, err := st.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
		if !errors.Is(err, broker.ErrUnavailable) {
			t.Fatalf("submit without quorum: %v, want ErrUnavailable", err)
		}
	}
	submit()
	advance(31 * time.Second)
	submit()
	err := st.WriteHealth()
	if err == nil {
		t.Fatal("no write health after 31 s of unanswered writes")
	}
	if msg := err.Error(); strings.Contains(msg, "disk full") || strings.Contains(msg, "restart") || !strings.Contains(msg, "cluster") {
		t.Fatalf("write health: %q, want the cluster not answering, no disk, no restart", msg)
	}
}
